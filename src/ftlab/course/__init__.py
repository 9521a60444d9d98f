"""Course mechanics: solution regions, the learner edition, grading, grader verification.

The repository is the reference solution. Each exercise is a *solution region*: the
reference code between a line ``### BEGIN SOLUTION M2.2`` and a line ``### END SOLUTION``
(see :mod:`ftlab.course.regions`). ``ftlab course release`` replaces each region by a ``raise NotImplementedError`` naming the
task; ``ftlab course grade`` runs the milestone suites and writes a per-task table;
``ftlab course verify`` proves the graders grade.
"""
