package actors

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/go-messaging-system/messaging/internal/lograte"
)

// retryWarnInterval is the shortest time between two warnings about the
// retried batch inserts of one tenant.
const retryWarnInterval = 10 * time.Second

// retryRunExpiry is how long after its last retry a run of retries is
// forgotten when no batch of the tenant has committed since, for example
// because the workers gave up on their batches at shutdown. While a fault
// lasts, a worker that holds a batch retries it every few seconds, because
// its backoff is at most RetryMax (5 s by default) plus a quarter of jitter.
const retryRunExpiry = time.Minute

// Messages of retryLog.
const (
	retryMsg     = "worker: batch insert failed, retrying"
	recoveredMsg = "worker: batch insert succeeded after retries"
)

// retryLog logs the retried batch inserts of one tenant's workers, counted
// together as one run. A fault such as a locked partition fails the batch
// of every worker, and each worker retries it with its own backoff, so a
// log line per worker would repeat the fault many times. retryLog warns at
// the first retry of a run and then at most once per interval, with the
// count so far, and logs the other retries at debug level. The first batch
// that commits after retries ends the run, and its log line carries the
// run's count.
type retryLog struct {
	now func() time.Time

	mu  sync.Mutex
	run lograte.Run // counts the retries of all the tenant's workers
}

func newRetryLog() *retryLog {
	return &retryLog{now: time.Now, run: lograte.Run{Interval: retryWarnInterval, Expiry: retryRunExpiry}}
}

// retry logs that a worker's insert of batchSize messages failed with err
// and is retried after wait. workerRetries counts the worker's retries
// since its last commit, this one included.
func (r *retryLog) retry(logger *slog.Logger, err error, batchSize, workerRetries int, wait time.Duration) {
	r.mu.Lock()
	retries, started, warn := r.run.Add(r.now())
	r.mu.Unlock()

	level := slog.LevelDebug
	if warn {
		level = slog.LevelWarn
	}
	logger.Log(context.Background(), level, retryMsg, "err", err, "batch_size", batchSize,
		"retries", workerRetries, "wait", wait, "tenant_retries", retries, "since", started)
}

// succeeded logs that a worker's batch committed after workerRetries
// retries. The first such commit of a run ends it and is logged at info
// level with the run's count, later ones at debug level.
func (r *retryLog) succeeded(logger *slog.Logger, workerRetries int) {
	r.mu.Lock()
	retries, started, ended := r.run.End()
	r.mu.Unlock()

	if !ended {
		logger.Debug(recoveredMsg, "retries", workerRetries)
		return
	}
	logger.Info(recoveredMsg, "retries", workerRetries, "tenant_retries", retries, "duration", r.now().Sub(started))
}
