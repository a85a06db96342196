package transport

import (
	"math/rand/v2"
	"time"
)

// backoff returns the wait before the n-th re-dial (n starts at 1). The
// base is minWait doubled n-1 times and capped at maxWait. The result is a
// random value in [base/2, base] ("equal jitter"), so that many clients
// that lost the broker at once do not re-dial in step.
func backoff(n int, minWait, maxWait time.Duration) time.Duration {
	base := minWait
	for i := 1; i < n && base < maxWait; i++ {
		base *= 2
	}
	if base > maxWait || base <= 0 {
		base = maxWait
	}

	half := base / 2
	if half <= 0 {
		return base
	}
	return half + rand.N(base-half+1)
}
