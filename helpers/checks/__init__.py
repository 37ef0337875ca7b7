"""Auto-checks for the labs. Each lesson has a module (``helpers.checks.l01`` ...) whose
functions inspect the real broker state or the learner's result and print one line of
feedback: ``✅ Exercise 2: ...`` or ``❌ Exercise 2: what is wrong; what was expected``.

A check never raises into the notebook: a learner's unfinished or broken answer is feedback,
not a traceback from the course's code.

>>> from helpers.checks import Feedback
>>> fb = Feedback(1, "create the topic")
>>> fb.expect(3 == 6, "topic `orders` has 3 partitions; the exercise asks for 6")
False
"""
from __future__ import annotations

import functools
import traceback

PASS, FAIL = "✅", "❌"


class Feedback:
    """Collects the problems found in one exercise and prints the verdict."""

    def __init__(self, exercise, task: str):
        self.exercise, self.task, self.problems = exercise, task, []

    def expect(self, condition, problem: str) -> bool:
        """Record ``problem`` unless ``condition`` holds; returns the condition."""
        if not condition:
            self.problems.append(problem)
        return bool(condition)

    def unset(self, name: str, value) -> bool:
        """True (and a problem recorded) while a stub variable still holds ``...`` or ``None``."""
        if value is ... or value is None:
            self.problems.append(f"`{name}` is not set yet: replace the `...` after `{name} =` with your answer")
            return True
        return False

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self, success: str) -> bool:
        if self.ok:
            print(f"{PASS} Exercise {self.exercise}: {success}")
        else:
            print(f"{FAIL} Exercise {self.exercise}: " + "; ".join(self.problems))
        return self.ok


def learner_call(fb: Feedback, what: str, fn, *args, **kwargs):
    """Call the learner's code; an exception becomes a recorded problem, and ``(False, None)``."""
    try:
        return True, fn(*args, **kwargs)
    except Exception as e:  # the learner's code may raise anything
        fb.problems.append(f"{what} raised {type(e).__name__}: {e}")
        return False, None


def check(exercise, task: str):
    """Decorator for a check function ``f(fb, ...)`` that returns the success sentence.

    The wrapped function prints the verdict and returns None, so a check cell shows one line.
    An unexpected error inside the check itself is reported as feedback, with a pointer to report it.
    """
    def wrap(f):
        @functools.wraps(f)
        def run(*args, **kwargs):
            fb = Feedback(exercise, task)
            try:
                success = f(fb, *args, **kwargs)
            except Exception as e:
                from ..errors import CourseError

                if isinstance(e, CourseError):
                    fb.problems.append(str(e))
                else:
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    fb.problems.append(f"the check could not finish ({type(e).__name__}: {e}, at "
                                       f"{where.name}:{where.lineno}); fix the exercise above and run both cells again")
                success = ""
            fb.verdict(success or task)
        run.exercise, run.task = exercise, task
        return run
    return wrap


def __getattr__(name: str):
    """``checks.l01`` imports ``helpers.checks.l01`` on first use, so one import serves every lab."""
    import importlib
    import re

    if re.fullmatch(r"l\d\d", name):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
