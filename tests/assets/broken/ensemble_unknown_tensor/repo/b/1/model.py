"""A minimal python model for validation fixtures."""


class TritonPythonModel:
    def execute(self, requests):
        return []
