"""nodeagent: the process on every virtual node that runs schedd's jobs.

It dials out to schedd over a WebSocket (:mod:`nodeagent.agent`, started by
:mod:`nodeagent.main`), reports the node's resources (:mod:`nodeagent.gpu`) and
telemetry, and runs each job rank under its own detached supervisor process
(:mod:`nodeagent.supervisor`, which starts the job with :mod:`nodeagent.runtime.process`
in the environment of :mod:`nodeagent.jobenv`) that enforces walltime, memory
and kills even while the agent itself is down. Agent and supervisor talk
through files in a per-rank directory (:mod:`nodeagent.jobdir`); the agent's
table of ranks (:mod:`nodeagent.jobs`) re-adopts them after a restart. Of
schedd it imports only :mod:`schedd.protocol`.
"""
