package api

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiterSweepInterval is how often publishLimiter drops the buckets of
// tenants that have been idle long enough for their bucket to refill.
const limiterSweepInterval = time.Minute

// publishLimiter keeps a token bucket per tenant, counted in messages. A nil
// *publishLimiter allows everything.
type publishLimiter struct {
	limit rate.Limit
	burst int

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

// newPublishLimiter returns a limiter of perSecond messages per second with
// bursts of burst messages, or nil when perSecond is zero.
func newPublishLimiter(perSecond float64, burst int) *publishLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &publishLimiter{
		limit:   rate.Limit(perSecond),
		burst:   burst,
		buckets: map[string]*rate.Limiter{},
	}
}

// maxMessages returns the most messages one request may carry: more could
// never fit in the bucket.
func (l *publishLimiter) maxMessages(batchMax int) int {
	if l == nil {
		return batchMax
	}
	return min(batchMax, l.burst)
}

// take removes n messages from tenantID's bucket. When the bucket holds
// fewer, it removes nothing and returns how long until it holds n, if
// nothing else takes from it meanwhile.
func (l *publishLimiter) take(tenantID string, n int, now time.Time) time.Duration {
	if l == nil {
		return 0
	}
	// One lock around the sweep and the reservation, so that a bucket is
	// never dropped between being looked up and being spent from.
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	bucket, ok := l.buckets[tenantID]
	if !ok {
		bucket = rate.NewLimiter(l.limit, l.burst)
		l.buckets[tenantID] = bucket
	}

	r := bucket.ReserveN(now, n)
	if !r.OK() {
		// n is above the burst, which maxMessages prevents. Report the time
		// the bucket needs to fill, which is the longest wait there is.
		return time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
	}
	wait := r.DelayFrom(now)
	if wait > 0 {
		r.CancelAt(now)
	}
	return wait
}

// sweep drops, at most once per limiterSweepInterval, the buckets that are
// full again. A full bucket behaves exactly like a new one, so dropping it
// changes no outcome and keeps the map as small as the set of recently
// active tenants.
func (l *publishLimiter) sweep(now time.Time) {
	if now.Sub(l.lastSweep) < limiterSweepInterval {
		return
	}
	l.lastSweep = now
	for id, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, id)
		}
	}
}

// retryAfter formats wait as a Retry-After value: whole seconds, rounded
// up, at least 1.
func retryAfter(wait time.Duration) string {
	return strconv.FormatInt(max(int64(math.Ceil(wait.Seconds())), 1), 10)
}

func writeRateLimited(w http.ResponseWriter, n int, wait time.Duration) {
	seconds := retryAfter(wait)
	w.Header().Set("Retry-After", seconds)
	writeProblem(w, http.StatusTooManyRequests,
		fmt.Sprintf("the tenant's publish rate limit is reached; retry these %d messages in %s s", n, seconds))
}
