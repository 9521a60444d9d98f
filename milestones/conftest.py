"""Milestone suites: the course plugin prints the progress table and records results."""

pytest_plugins = ["ftlab.course.plugin"]
