"""Systems of Power: the importable helpers every notebook uses.

Modules, each named for what it holds:

- ``helpers.config``  settings from the environment and ``.env`` (bootstrap servers, AMQP URLs, learner prefix)
- ``helpers.brokers`` broker control (``up``, ``down``, ``status``, ``kill``, ``start`` ...) and reachability checks
- ``helpers.errors``  the course's exceptions
"""

__version__ = "0.1.0"
