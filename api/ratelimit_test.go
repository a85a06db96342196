package api

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func withRateLimit(perSecond float64, burst int) setupOption {
	return withConfig(func(c *Config) {
		c.PublishRateLimit = perSecond
		c.PublishRateBurst = burst
	})
}

// batchBody returns a publish request of n messages.
func batchBody(n int) string {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"payload": %d}`, i)
	}
	return `{"messages": [` + strings.Join(items, ",") + `]}`
}

// publishN publishes a batch of n messages for tenant and returns the
// status and Retry-After header.
func publishN(t *testing.T, env *testEnv, tenant string, n int) (int, string) {
	t.Helper()
	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages", token: tenantToken(t, tenant),
		body: batchBody(n)})
	if rec.Code == http.StatusTooManyRequests {
		requireProblem(t, rec, http.StatusTooManyRequests, "rate limit")
	}
	return rec.Code, rec.Header().Get("Retry-After")
}

func TestRateLimitOffByDefault(t *testing.T) {
	t.Parallel()
	env := setup(t)
	for range 20 {
		code, _ := publishN(t, env, "alpha", 100)
		require.Equal(t, http.StatusAccepted, code)
	}
}

func TestRateLimitCountsMessages(t *testing.T) {
	t.Parallel()
	// One message per 1000 s: nothing refills during the test.
	env := setup(t, withRateLimit(0.001, 5))

	code, _ := publishN(t, env, "alpha", 3)
	require.Equal(t, http.StatusAccepted, code)
	code, retry := publishN(t, env, "alpha", 3)
	require.Equal(t, http.StatusTooManyRequests, code, "3 messages do not fit in the 2 left")
	seconds, err := strconv.Atoi(retry)
	require.NoError(t, err, "Retry-After %q is whole seconds", retry)
	require.Greater(t, seconds, 900)

	code, _ = publishN(t, env, "alpha", 2)
	require.Equal(t, http.StatusAccepted, code, "a rejected request takes nothing from the bucket")
	code, _ = publishN(t, env, "alpha", 1)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.Len(t, env.pub.messages("alpha"), 5)

	code, _ = publishN(t, env, "beta", 5)
	require.Equal(t, http.StatusAccepted, code, "each tenant has its own bucket")
}

func TestRateLimitCapsBatchAtBurst(t *testing.T) {
	t.Parallel()
	env := setup(t, withRateLimit(100, 5))
	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages", token: tenantToken(t, "alpha"),
		body: batchBody(6)})
	requireProblem(t, rec, http.StatusBadRequest, "the maximum is 5 per request")
	code, _ := publishN(t, env, "alpha", 5)
	require.Equal(t, http.StatusAccepted, code, "the oversized batch took nothing")
}

func TestRateLimitInvalidRequestsTakeNothing(t *testing.T) {
	t.Parallel()
	env := setup(t, withRateLimit(0.001, 2))
	for range 5 {
		rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages",
			token: tenantToken(t, "alpha"), body: `{"payload": nope}`})
		require.Equal(t, http.StatusBadRequest, rec.Code)
	}
	code, _ := publishN(t, env, "alpha", 2)
	require.Equal(t, http.StatusAccepted, code)
}

func TestRateLimitRetryAfterMinimum(t *testing.T) {
	t.Parallel()
	// The bucket refills one message in 500 ms, which rounds up to 1 s.
	env := setup(t, withRateLimit(2, 1))
	code, _ := publishN(t, env, "alpha", 1)
	require.Equal(t, http.StatusAccepted, code)
	code, retry := publishN(t, env, "alpha", 1)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.Equal(t, "1", retry)
}

func TestRateLimitRefills(t *testing.T) {
	t.Parallel()
	env := setup(t, withRateLimit(20, 1))
	code, _ := publishN(t, env, "alpha", 1)
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, func() bool {
		code, _ := publishN(t, env, "alpha", 1)
		return code == http.StatusAccepted
	}, 5*time.Second, 10*time.Millisecond, "one message refills in 50 ms")
}

// Concurrent requests never spend the same tokens: exactly burst messages
// pass, whatever the interleaving.
func TestRateLimitConcurrentRequests(t *testing.T) {
	t.Parallel()
	const burst, workers, perWorker = 40, 16, 10
	env := setup(t, withRateLimit(0.001, burst))

	type result struct {
		code, size int
		retry      string
	}
	results := make(chan result, workers*perWorker)
	token := tenantToken(t, "alpha")
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				size := 1 + (w+i)%3
				rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages", token: token,
					body: batchBody(size)})
				results <- result{code: rec.Code, size: size, retry: rec.Header().Get("Retry-After")}
			}
		})
	}
	wg.Wait()
	close(results)

	messages := map[int]int{}
	for r := range results {
		messages[r.code] += r.size
		if r.code == http.StatusTooManyRequests {
			require.NotEmpty(t, r.retry)
		}
	}
	accepted := messages[http.StatusAccepted]
	require.LessOrEqual(t, accepted, burst)
	require.GreaterOrEqual(t, accepted, burst-2, "only batches larger than what was left are refused")
	require.Len(t, env.pub.messages("alpha"), accepted)
	require.Equal(t, []int{http.StatusAccepted, http.StatusTooManyRequests}, slices.Sorted(maps.Keys(messages)))
}

func TestPublishLimiterWaits(t *testing.T) {
	t.Parallel()
	l := newPublishLimiter(2, 4)
	start := time.Unix(1_700_000_000, 0)

	require.Zero(t, l.take("a", 4, start))
	require.Equal(t, 500*time.Millisecond, l.take("a", 1, start))
	require.Equal(t, 1500*time.Millisecond, l.take("a", 3, start))
	require.Zero(t, l.take("a", 1, start.Add(500*time.Millisecond)))
	require.Equal(t, 2*time.Second, l.take("a", 5, start), "above the burst: the time to fill the bucket")
}

func TestPublishLimiterDropsFullBuckets(t *testing.T) {
	t.Parallel()
	l := newPublishLimiter(1, 2)
	start := time.Unix(1_700_000_000, 0)
	l.take("a", 2, start)
	l.take("b", 1, start)
	require.Len(t, l.buckets, 2)

	// After 90 s both buckets are full again, so the sweep drops them
	// without changing any outcome.
	later := start.Add(90 * time.Second)
	l.take("c", 2, later)
	require.Len(t, l.buckets, 1)
	require.Zero(t, l.take("a", 2, later))
}

func TestNilPublishLimiterAllowsAll(t *testing.T) {
	t.Parallel()
	var l *publishLimiter
	require.Nil(t, newPublishLimiter(0, 10))
	require.Zero(t, l.take("a", 1_000_000, time.Now()))
	require.Equal(t, 1000, l.maxMessages(1000))
}

func TestRetryAfterRoundsUp(t *testing.T) {
	t.Parallel()
	require.Equal(t, "1", retryAfter(time.Millisecond))
	require.Equal(t, "1", retryAfter(0))
	require.Equal(t, "2", retryAfter(1001*time.Millisecond))
	require.Equal(t, "60", retryAfter(time.Minute))
}

func TestRateLimitConfigValidation(t *testing.T) {
	t.Parallel()
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1)} {
		cfg := Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64, PublishRateLimit: bad}
		cfg.setDefaults()
		require.ErrorContains(t, cfg.validate(), "PublishRateLimit", "rate %v", bad)
	}
	cfg := Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64, PublishRateLimit: 5, PublishRateBurst: -1}
	cfg.setDefaults()
	require.ErrorContains(t, cfg.validate(), "PublishRateBurst")

	cfg = Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64, PublishRateLimit: 5000.5}
	cfg.setDefaults()
	require.NoError(t, cfg.validate())
	require.Equal(t, 5001, cfg.PublishRateBurst, "the default burst holds one second of messages")
	cfg = Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64, PublishRateLimit: 5}
	cfg.setDefaults()
	require.Equal(t, DefaultMaxBatchMessages, cfg.PublishRateBurst, "and at least one full batch")
}
