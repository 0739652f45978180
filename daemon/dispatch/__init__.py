"""Dispatch: Celery configuration and task names, the brokers, the doorbell that sends a job's task, the reconciler."""
