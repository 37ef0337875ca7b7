"""Course-specific exceptions: each carries one sentence that says what to do."""


class CourseError(Exception):
    """Base class. The message is meant for a learner: it names the fix."""


class ConfigError(CourseError):
    """A setting in the environment or `.env` is malformed."""


class BrokerError(CourseError):
    """A broker is unreachable, or the backend cannot start it."""
