"""``qmdctl up``, ``down``, ``status``: the local tritonserver; ``metrics-exporter`` for Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qmd_triton.cli.common import State, emit_json, pass_state, server_options, server_settings
from qmd_triton.errors import IndexCorrupt, IndexUnavailable, QmdError
from qmd_triton.index.config import index_config
from qmd_triton.index.factory import index_problem, index_summary
from qmd_triton.serving import probes, server, supervisor_daemon
from qmd_triton.serving.health import PROBE_MODELS


@click.command()
@server_options
@click.option("--timeout", "startup_timeout_s", type=float, default=None, envvar="QMD_STARTUP_TIMEOUT",
              show_envvar=True,
              help="Seconds to wait for every model to load. [default: 120]")
@click.option("--log-verbose", type=int, default=0, show_default=True, help="Triton's --log-verbose level.")
@click.option("--monitor", is_flag=True,
              help="Also start Prometheus (alert rules loaded) and `qmdctl metrics-exporter`.")
@click.option("--prometheus-port", type=int, default=9090, show_default=True, envvar="QMD_PROMETHEUS_PORT",
              show_envvar=True, help="With --monitor: Prometheus's port.")
@click.option("--exporter-port", type=int, default=9108, show_default=True, envvar="QMD_EXPORTER_PORT",
              show_envvar=True, help="With --monitor: the metrics exporter's port.")
@click.option("--trace-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trace requests in Triton's own format (timestamps per model) to FILE.N, every --trace-rate-th.")
@click.option("--otel-endpoint", default=None, envvar="QMD_OTEL_ENDPOINT", show_envvar=True,
              help="Trace requests with OpenTelemetry (OTLP over HTTP) to HOST:PORT/v1/traces.")
@click.option("--trace-rate", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Trace one request in this many.")
@click.option("--model-config-name", default=None, envvar="QMD_MODEL_CONFIG_NAME", show_envvar=True,
              help="Use MODEL/configs/NAME.pbtxt where a model has one (e.g. vllm, deepspeed for qmd_expand).")
@click.option("--supervise/--no-supervise", default=True, show_default=True, envvar="QMD_SUPERVISE",
              show_envvar=True,
              help="Also start `qmdctl supervise`: it reloads a model whose backend process died and restarts a "
                   "server that died.")
@pass_state
def up(state: State, startup_timeout_s: float | None, log_verbose: int, monitor: bool, prometheus_port: int,
       exporter_port: int, trace_file: Path | None, otel_endpoint: str | None, trace_rate: int,
       model_config_name: str | None, supervise: bool, **kwargs: Any) -> None:
    """Start the local Triton server on the model repository and wait until it is ready.

    Where the home's index is on the milvus backend without a uri (`[index] backend = "milvus"` in
    config.toml), the home's Milvus Lite server is started first, beside it; `qmdctl down` stops both.

    The shared-memory, model-repository, logging and trace APIs are restricted (on HTTP and gRPC) to
    requests with the header `admin-key` set to the key in $QMD_HOME/run/admin.key.
    """
    settings = server_settings(state, kwargs).with_(startup_timeout_s=startup_timeout_s)
    extra = (f"--model-config-name={model_config_name}",) if model_config_name else ()
    extra += trace_flags(trace_file, otel_endpoint, trace_rate)
    if monitor:
        extra += ("--metrics-config=summary_latencies=true",)
    info = server.start(settings, log_verbose=log_verbose, extra_args=extra, supervise=supervise,
                        progress=state.progress)
    if monitor:
        from qmd_triton.ops.monitor import start_monitor

        try:
            start_monitor(settings, prometheus_port=prometheus_port, exporter_port=exporter_port,
                          progress=state.progress)
        except Exception:
            server.stop(settings)  # all or nothing: no half-monitored server left behind
            raise
    state.progress(f"http {info.host}:{info.http_port}  grpc {info.host}:{info.grpc_port}  "
                   f"metrics http://{info.host}:{info.metrics_port}/metrics")


def trace_flags(trace_file: Path | None, otel_endpoint: str | None, rate: int) -> tuple[str, ...]:
    """Triton's --trace-config flags: its own JSON trace files, or OpenTelemetry (OTLP/HTTP)."""
    if trace_file and otel_endpoint:
        raise click.UsageError("--trace-file and --otel-endpoint are two trace modes: pick one")
    if trace_file:
        return ("--trace-config=level=TIMESTAMPS", f"--trace-config=rate={rate}",
                f"--trace-config=triton,file={trace_file.resolve()}", "--trace-config=triton,log-frequency=1")
    if otel_endpoint:
        return ("--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS", f"--trace-config=rate={rate}",
                f"--trace-config=opentelemetry,url={otel_endpoint}",
                "--trace-config=opentelemetry,resource=service.name=qmd-triton")
    return ()


@click.command()
@pass_state
def down(state: State) -> None:
    """Stop the server that `qmdctl up` started (and only that one), its monitoring, and the home's Milvus
    Lite server (the milvus index backend without a uri)."""
    from qmd_triton.ops.monitor import stop_monitor

    settings = state.settings()
    supervisor_daemon.stop_supervisor(settings, progress=state.progress)  # first: it would bring the server back
    stop_monitor(settings, progress=state.progress)
    from qmd_triton.serving import milvus_lite

    try:
        info = server.stop(settings, progress=state.progress)
        state.progress(f"stopped tritonserver (pid {info.pid})")
    except QmdError:
        # no Triton of this home: the Milvus Lite a CLI command started may still run
        if not milvus_lite.stop(index_config(settings.home), progress=state.progress):
            raise
        state.progress("stopped Milvus Lite")
        return
    # the home's Milvus Lite (index.backend = "milvus" without a uri), started by `up` or a CLI command
    if milvus_lite.stop(index_config(settings.home), progress=state.progress):
        state.progress("stopped Milvus Lite")


@click.command("metrics-exporter")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve /metrics on.")
@click.option("--port", type=int, default=9108, show_default=True, envvar="QMD_EXPORTER_PORT", show_envvar=True,
              help="Port to serve /metrics on.")
@click.option("--triton-url", default=None, envvar="QMD_TRITON_URL", show_envvar=True,
              help="Triton HTTP host:port whose model states to export. [default: the configured server]")
@click.option("--admin-key", default=None, envvar="QMD_ADMIN_KEY", show_envvar=True,
              help="Value of the admin-key header for a server that restricts its model-repository API.")
@pass_state
def metrics_exporter(state: State, host: str, port: int, triton_url: str | None, admin_key: str | None) -> None:
    """Serve the control plane's metrics for Prometheus: index counts, staleness, eval scores, model states."""
    from qmd_triton.ops.prometheus import serve

    settings = state.settings()
    if admin_key is None:  # the local server's key, when this home started one
        admin_key = server.admin_headers(settings).get(server.ADMIN_HEADER)
    state.progress(f"serving qmd metrics on http://{host}:{port}/metrics")
    serve(settings, host=host, port=port, triton_url=triton_url or settings.http_url, admin_key=admin_key)


@click.command()
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def status(state: State, as_json: bool, **kwargs: Any) -> None:
    """Show the index (collections, documents, chunks, share embedded), the server's state, and the query
    stages: each stage's model, the languages it reads, and how often the stage ran or was bypassed (and why)
    since the server started.

    Besides Triton's own readiness, each model served by backend processes must have all of them alive
    (for a server this home started), and qmd_search, qmd_vsearch and qmd_query must answer a small query.
    Exits with status 1 when the server is not ready or a model does not answer (named on stderr), so
    scripts can wait on it.
    """
    from qmd_triton.search.coverage import repository_languages

    settings = server_settings(state, kwargs)
    st = probes.status(settings)
    config = index_config(settings.home)
    if config.local:
        from qmd_triton.serving import milvus_lite

        milvus_lite.ensure_running(config, progress=state.progress)
    damaged = None
    try:
        index = index_summary(config)
    except (IndexCorrupt, IndexUnavailable) as e:  # what every reader of the file would answer
        index, damaged = None, str(e)
    stages = [{**m.to_dict(), "counts": st.stages.get(m.to_dict()["stage"], {})}
              for m in repository_languages(settings.model_repository).values()]
    if as_json:
        emit_json({"url": st.url, "live": st.live, "ready": st.ready, "healthy": st.healthy, "managed": st.managed,
                   "pid": st.pid, "log": st.log, "supervisor": st.supervisor, "models": st.models,
                   "problems": st.problems, "index": index if damaged is None else {"problem": damaged},
                   "stages": stages})
    else:
        if damaged is not None:
            click.echo(f"index   DAMAGED: {damaged}")
        elif index is None:
            click.echo(f"index   none yet in {config.describe()} (qmdctl collection add, then qmdctl update)")
        else:
            click.echo(f"index   {index['path']}  {index['documents']} documents, {index['chunks']} chunks, "
                       f"{index['embedded_share']:.0%} embedded")
            for name, c in sorted(index["collections"].items()):
                click.echo(f"  {name:<20} {c['documents']:>6} docs {c['chunks']:>7} chunks {c['embedded']:>7} embedded")
        who = f"started by qmdctl, pid {st.pid}" if st.managed else "not started by qmdctl"
        health = ("ready" if st.healthy else "ready, but not every model answers") if st.ready else (
            "live, not ready" if st.live else "down")
        click.echo(f"server  {st.url}  {health}" + (f"  ({who})" if st.live else ""))
        if st.log:
            click.echo(f"log     {st.log}")
        if st.managed:
            click.echo("supervisor  " + (f"running, pid {st.supervisor}" if st.supervisor else
                                         "not running (qmdctl up starts one; nothing brings a dead backend back)"))
        for m in st.models:
            reason = f"  {m['reason']}" if m["reason"] else ""
            problem = f"  NOT ANSWERING: {st.problems[m['name']]}" if m["name"] in st.problems else ""
            click.echo(f"  {m['name']:<20} v{m['version'] or '-':<3} {m['state']}{reason}{problem}")
        click.echo("stages  (model: languages it reads; since the server started: outcomes)")
        for s in stages:
            langs = ", ".join(s["languages"]) if s["languages"] else "undeclared (read as every script)"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items())) or "-"
            click.echo(f"  {s['stage']:<10} {s['name'] or '-'}: {langs}; {counts}")
        click.echo("  (bypassed/language: the model does not read the query's language; partial: some candidates "
                   "kept their fused place)")
    for model, why in sorted(st.problems.items()):
        state.warn(f"{model}: {why}")
    if damaged is not None:
        state.warn(f"index: {damaged}")
    if not st.healthy or damaged is not None:
        raise SystemExit(1)


@click.command()
@server_options
@click.option("--url", default=None, envvar="QMD_TRITON_URL", show_envvar=True,
              help="Triton HTTP host:port to check. [default: the configured server]")
@click.option("--model", "models", multiple=True, type=click.Choice(list(PROBE_MODELS)),
              help="A pipeline to ask (repeatable). [default: all three]")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per request.")
@pass_state
def health(state: State, url: str | None, models: tuple[str, ...], timeout: float, **kwargs: Any) -> None:
    """Exit 0 when the search pipelines answer a small real query, else 1 with one line naming the model.

    What container probes run (compose healthcheck, Kubernetes readiness and liveness): unlike
    /v2/health/ready, it fails while a model's backend process is dead. A model answering with its own
    request error (no index yet) counts as answering; one answering that the index is damaged does not, nor
    (for this home's own server) an index file cut shorter than its header says.
    """
    from qmd_triton.serving.health import probe_all

    settings = server_settings(state, kwargs)
    base = f"http://{url or settings.http_url}"
    problems = probe_all(base, models or PROBE_MODELS, timeout=timeout)
    config = index_config(settings.home)
    if url is None:  # this home's own server reads this index
        problem = index_problem(config)
        if problem:
            problems["index"] = problem
    if problems:
        raise click.ClickException("; ".join(f"{m}: {why}" for m, why in problems.items()))
    state.progress(f"{', '.join(models or PROBE_MODELS)} answer at {base}")


@click.command()
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between checks.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_state
def supervise(state: State, interval_s: float, command: tuple[str, ...]) -> None:
    """Bring back a model whose backend process died, or a server that died, without a person.

    Without COMMAND: watch the local server of this home (what `qmdctl up` starts in the background; `qmdctl
    down` stops it). With `-- tritonserver ARGS...` (containers): run that server as a child, pass SIGTERM on
    to it and exit with its status; a model that cannot be reloaded stops the server and exits 1 so that the
    container restarts. Reloading needs `--model-control-mode=explicit --load-model=*` and, where the
    model-repository API is restricted, QMD_ADMIN_KEY.
    """
    import os
    import threading
    import time

    from qmd_triton.serving import supervisor

    def log(message: str) -> None:
        click.echo(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervise: {message}", err=True)

    stop = threading.Event()
    supervisor.install_stop_handlers(stop)
    if command:
        code = supervisor.supervise_child(list(command), stop, log, admin_key=os.environ.get("QMD_ADMIN_KEY", ""),
                                          interval_s=interval_s, home=state.settings().home)
    else:
        code = supervisor.supervise_local(state.settings(), stop, log, interval_s=interval_s)
    raise SystemExit(code)
