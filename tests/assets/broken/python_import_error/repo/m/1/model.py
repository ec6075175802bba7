import no_such_module_qmd


class TritonPythonModel:
    pass
