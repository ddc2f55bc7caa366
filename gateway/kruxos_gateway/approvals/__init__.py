"""Human approvals: the records (``store``) and the service that answers agents and replays approved
invocations through the pipeline (``service``)."""
