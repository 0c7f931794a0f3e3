"""How a command is run: cgroups (v1 and v2 behind one interface), the spawn argv
(trampoline + bubblewrap), and program resolution.

- `jobworker.sandbox.cgroups`: `detect()` picks a `CgroupDriver`; a `JobCgroup` per job.
- `jobworker.sandbox.bwrap`: the bubblewrap command line for a job (`spawn_argv`).
- `jobworker.sandbox.spawn`: resolve the program, start the trampoline, learn the command's pid.
"""
