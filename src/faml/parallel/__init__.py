"""Executors of the per-particle map step: one interface, serial or local processes."""

from faml.parallel.executor import Executor, ProcessExecutor, SerialExecutor, make_executor

__all__ = ["Executor", "ProcessExecutor", "SerialExecutor", "make_executor"]
