"""A job's life in jwsd: its records, its output log, and the tracker that owns them.

- `jobworker.jobs.tracker`: `JobTracker`, every job of this host by id and owner;
- `jobworker.jobs.store`: `JobStore`, the job records in SQLite (`JobRecord`);
- `jobworker.jobs.output_log`: `FileLog`, a job's output file for any number of followers;
- `jobworker.jobs.watcher`: `OutputWatcher`, one inotify instance for every job's output file;
- `jobworker.jobs.shared_reads`: the block reads of output files that followers share;
- `jobworker.jobs.retention`: `RetentionPolicy`, which finished jobs to forget.
"""
