"""The HTTP gateway (`qmdctl api`): plain JSON endpoints over the Triton models, for programs."""
