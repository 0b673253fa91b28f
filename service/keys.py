"""The Redis key layout, in one place. The Lua scripts build the same names from the same prefix.

    {p}:job:{id}                      hash    the job record
    {p}:job:{id}:events               stream  that job's events (capped, expires with the record)
    {p}:events                        stream  every event of every job (capped), read by the live fan-out
    {p}:seq                           string  counter giving each job its listing order
    {p}:t:{tenant}:idx:all            zset    the tenant's jobs by seq (newest = highest)
    {p}:t:{tenant}:idx:state:{state}  zset    ... by state
    {p}:t:{tenant}:idx:type:{type}    zset    ... by job type
    {p}:t:{tenant}:idx:queue:{queue}  zset    ... by queue
    {p}:t:{tenant}:idem:{key}         string  idempotency key -> job id (with a TTL)
    {p}:counts                        hash    "{tenant}|{queue}|{state}" -> number of jobs
    {p}:schedule                      zset    job id -> due time (ms): delayed jobs and retry backoffs
    {p}:claimed                       zset    job id -> lease end (ms): entries a promoter is publishing
    {p}:workers                       zset    worker id -> last heartbeat (ms)
    {p}:cancel                        pubsub  job ids whose running attempt must stop
    {p}:lock:{name}                   string  scheduler locks (SET NX PX)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "conveyor"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def index(self, tenant: str, kind: str = "all", value: str | None = None) -> str:
        base = f"{self.prefix}:t:{tenant}:idx:"
        return base + "all" if kind == "all" else f"{base}{kind}:{value}"

    def index_prefix(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:idx:"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:t:{tenant}:idem:{key}"

    @property
    def counts(self) -> str:
        return f"{self.prefix}:counts"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}:schedule"

    @property
    def claimed(self) -> str:
        return f"{self.prefix}:claimed"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"
