package persistence

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-messaging-system/messaging/internal/lograte"
)

// lockWarnInterval is the shortest time between two warnings about shared
// transactions that a lock wait or deadlock on the same tenant stopped.
const lockWarnInterval = 10 * time.Second

// lockRunExpiry is how long after its last failure a run of lock failures
// is forgotten when none of the tenant's batches has committed since, for
// example because the tenant gets no more messages. Under a lasting lock a
// tenant with batches to store fails a shared transaction every few
// seconds, because it stays out of them only for lockedPause, and the
// server's workers retry a batch after at most 6.25 s by default.
const lockRunExpiry = time.Minute

// Messages of lockLog.
const (
	lockFailureMsg = "persistence: shared insert transaction stopped by a lock wait or deadlock, " +
		"so its batches are stored one by one"
	lockEndMsg = "persistence: shared insert transactions no longer stopped by a lock wait or deadlock"
)

// lockLog logs the shared transactions that a lock wait or deadlock
// stopped, with each tenant's failures counted as one run. While an
// operator holds a lock on a partition, every batch of that tenant that
// joins a shared transaction fails it. lockLog warns at the first failure
// of a run and then at most once per interval, with the count so far, and
// logs the rest at debug level. When a batch of the tenant commits again,
// it logs the end of a run of more than one failure.
type lockLog struct {
	logger   *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu       sync.Mutex
	byTenant map[string]*lograte.Run
	// open is len(byTenant), read without mu on every commit.
	open atomic.Int32
}

func newLockLog(logger *slog.Logger, interval time.Duration) *lockLog {
	return &lockLog{logger: logger, interval: interval, now: time.Now, byTenant: make(map[string]*lograte.Run)}
}

// failed records a shared transaction of the tenants that the statement of
// tenantID stopped with err, and logs it.
func (l *lockLog) failed(tenantID string, tenants []string, err error) {
	now := l.now()
	l.mu.Lock()
	for id, r := range l.byTenant {
		if r.Stale(now) {
			delete(l.byTenant, id)
		}
	}
	r := l.byTenant[tenantID]
	if r == nil {
		r = &lograte.Run{Interval: l.interval, Expiry: lockRunExpiry}
		l.byTenant[tenantID] = r
	}
	failures, started, warn := r.Add(now)
	l.open.Store(int32(len(l.byTenant)))
	l.mu.Unlock()

	level := slog.LevelDebug
	if warn {
		level = slog.LevelWarn
	}
	l.logger.Log(context.Background(), level, lockFailureMsg, "err", err, "tenant_id", tenantID, "tenants", tenants,
		"failures", failures, "since", started)
}

// committed ends the run of tenantID, whose batch has committed, and logs
// its end when it had more than one failure.
func (l *lockLog) committed(tenantID string) {
	if l.open.Load() == 0 {
		return
	}
	l.mu.Lock()
	r := l.byTenant[tenantID]
	delete(l.byTenant, tenantID)
	l.open.Store(int32(len(l.byTenant)))
	l.mu.Unlock()

	if r == nil {
		return
	}
	if failures, started, _ := r.End(); failures > 1 {
		l.logger.Info(lockEndMsg, "tenant_id", tenantID, "failures", failures, "duration", l.now().Sub(started))
	}
}
