"""Jobs: the job table, the checks before a job exists, the job function, the workers (embedded threads, or
Celery queue workers on a broker), the reaper and the sweeper.

Nothing in here knows of HTTP; the API (:mod:`tileseg.api`) and ``tileseg worker`` call into it, and the
API hears of each finished run through the callback it hands in (``on_outcome``).

How no job is lost, and none is published twice
-----------------------------------------------

The job table (:mod:`tileseg.jobs.store`) is the one source of truth. Anything else may fail at any moment
(a worker SIGKILLed or out of memory, a machine lost, the broker restarted empty, a server that crashes)
and the table still says what each job is, and which attempt at it may change it.

1. **Compare-and-set.** Every change of state is a single statement on the row, conditioned on what the
   row was (``... WHERE id = ? AND status = ? AND token = ?``). Two workers can never both claim a job, and
   a statement that touches no row tells its caller that the job has moved on without it.
2. **Attempts and leases.** A claim gives the job a fresh *attempt token* and counts the attempt. While the
   attempt runs, its *heartbeat* renews its *lease*: a thread every ``TILESEG_HEARTBEAT`` seconds
   (:class:`tileseg.jobs.runner.Heartbeat`), and every progress report. A running job whose heartbeat is
   older than ``TILESEG_LEASE`` belongs to a worker that died.
3. **Reaping.** In queue mode the reaper (:mod:`tileseg.jobs.reaper`, in every worker and in the API) puts
   such jobs back in the queue and sends them to the broker at once, or fails them once they have used up
   ``TILESEG_MAX_ATTEMPTS``. An embedded server is the only worker of its table: when it starts, every job
   that reads "running" was running when it stopped, and goes back to the queue the same way.
4. **Finding out.** After each batch, the running attempt's progress report learns whether the attempt
   still holds its job. Canceled, it stops and removes the job's files; its lease gone to another attempt,
   it stops and touches nothing of the job's; its worker stopping, it hands the job back to the queue
   without counting the attempt.
5. **Publishing.** Each attempt writes into a folder of its own (``attempts/<token>/``, see
   :mod:`tileseg.jobs.files`), never where results are served from, as two attempts may run at once (one
   that lost its lease has not noticed yet). Only the attempt that holds the job may end it, by
   compare-and-set on its token; a success records that token as the *published* attempt. The table is
   the commit point: the files are then renamed into place, each rename atomic, and whoever finds them
   not yet moved (the API asked for a result, the sweeper) moves them, so a worker that dies between the
   two loses nothing.
6. **The broker carries nothing but job ids.** It may lose, repeat or hold back messages: a message whose
   job is no longer queued is a no-op; one is acknowledged only when its job has ended; and the reaper
   sends again the queued jobs that nobody claimed and that the broker no longer holds.
7. **Shards.** A sharded job (:mod:`tileseg.jobs.shards.run`) stays ``running`` while its shards, rows of
   their own (:mod:`tileseg.jobs.shards.store`), are claimed, leased, beaten, reaped and retried one by one
   by the same rules; the job's own lease is left alone meanwhile. The shard that ends last takes the job's
   lease in the same transaction and publishes the job as in 5; a shard that fails fails the job in its
   own transaction.
8. **One clock.** Every time in the table (created, started, finished, heartbeats, expiry) is read on the
   database's clock, so machines whose clocks drift apart still agree on which leases have run out.
"""
