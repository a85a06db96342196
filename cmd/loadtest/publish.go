package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// minPayloadBytes fits the smallest payload that payload builds:
// {"seq":N,"pad":""} with a ten-digit N.
const minPayloadBytes = 32

// messageIDPrefix starts every message id; the rest is the sequence number
// within the tenant.
const messageIDPrefix = "msg-"

func messageID(seq int) string { return messageIDPrefix + strconv.Itoa(seq) }

// parseMessageID returns the sequence number in a message id that
// messageID made, or false for any other id.
func parseMessageID(id string) (int, bool) {
	digits, ok := strings.CutPrefix(id, messageIDPrefix)
	if !ok {
		return 0, false
	}
	seq, err := strconv.Atoi(digits)
	if err != nil || seq < 0 || strconv.Itoa(seq) != digits {
		return 0, false
	}
	return seq, true
}

// payload returns a JSON object of size bytes (more when size is below
// minPayloadBytes) that carries seq.
func payload(seq, size int) []byte {
	head := `{"seq":` + strconv.Itoa(seq) + `,"pad":"`
	const tail = `"}`
	pad := max(0, size-len(head)-len(tail))
	b := make([]byte, 0, len(head)+pad+len(tail))
	b = append(b, head...)
	for range pad {
		b = append(b, 'x')
	}
	return append(b, tail...)
}

// publisher publishes jobs. send starts one job and returns a function that
// waits until the broker (over AMQP) or the server (over HTTP) confirmed
// every message of it. A publisher is safe for one sending goroutine and
// one waiting goroutine at a time.
type publisher interface {
	send(ctx context.Context, j job) (wait func(context.Context) error, err error)
	close() error
}

// maxInflight is the number of jobs a publisher sends before it waits for
// the confirms of the oldest, so that confirm round trips do not limit the
// offered load.
const maxInflight = 8

// publish sends j and waits for its confirms.
func publish(ctx context.Context, p publisher, j job) error {
	wait, err := p.send(ctx, j)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// retryableError marks a failure after which publishing the same messages
// again may succeed; their message ids keep a retry from storing twice.
type retryableError struct{ err error }

func (e retryableError) Error() string { return e.err.Error() }
func (e retryableError) Unwrap() error { return e.err }

const publishAttempts = 3

// isRetryable reports whether err is a retryableError.
func isRetryable(err error) bool {
	var retryable retryableError
	return errors.As(err, &retryable)
}

// publishWithRetry publishes j, again after a retryable failure, up to
// publishAttempts times with a doubling pause.
func publishWithRetry(ctx context.Context, p publisher, j job) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := publish(ctx, p, j)
		if err == nil || !isRetryable(err) || attempt == publishAttempts {
			return err
		}
		if !sleepUntil(ctx, time.Now().Add(wait)) {
			return err
		}
		wait *= 2
	}
}

// publishResult is the outcome of publishing.
type publishResult struct {
	started  time.Time
	finished time.Time
	err      error // the first failure, which stopped publishing
}

// publishAll runs one publisher per goroutine over the jobs from plan and
// records each job in the ledger. The first failure stops publishing.
func publishAll(parent context.Context, c *Config, pubs []publisher, led *ledger, prog progress) publishResult {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var (
		once     sync.Once
		firstErr error
	)
	fail := func(err error) {
		once.Do(func() { firstErr = err })
		cancel()
	}

	res := publishResult{started: time.Now()}
	jobs := startJobs(ctx, c, res.started, len(pubs))

	var wg sync.WaitGroup
	for _, p := range pubs {
		inflight := make(chan sent, maxInflight)
		wg.Go(func() { sendJobs(ctx, p, jobs, inflight) })
		wg.Go(func() {
			for sj := range inflight {
				err := sj.err
				if err == nil {
					err = sj.wait(ctx)
				}
				if isRetryable(err) {
					err = publishWithRetry(ctx, p, sj.j)
				}
				led.record(sj.j, err == nil)
				if err != nil {
					fail(err)
					continue
				}
				prog.add(sj.j.n)
			}
		})
	}
	wg.Wait()

	res.finished = time.Now()
	res.err = firstErr
	if res.err == nil && parent.Err() != nil {
		res.err = fmt.Errorf("publishing interrupted: %w", context.Cause(parent))
	}
	return res
}

// sent is a job that a publisher sent, or failed to send when err is set.
type sent struct {
	j    job
	wait func(context.Context) error
	err  error
}

// sendJobs sends each job with p and passes it on to inflight, which it
// closes at the end. Once ctx ends, the remaining jobs stay unsent.
func sendJobs(ctx context.Context, p publisher, jobs <-chan job, inflight chan<- sent) {
	defer close(inflight)
	for j := range jobs {
		if ctx.Err() != nil {
			continue
		}
		wait, err := p.send(ctx, j)
		inflight <- sent{j: j, wait: wait, err: err}
	}
}

// startJobs starts dispatching the plan of c from started on and returns
// the channel of jobs.
func startJobs(ctx context.Context, c *Config, started time.Time, buffer int) <-chan job {
	// Over HTTP a job is a request, so a longer tick makes fewer, larger ones.
	tick := time.Millisecond
	if c.Via == viaHTTP {
		tick = 10 * time.Millisecond
	}
	s := newScheduler(weights(c.Tenants, c.Skew), c.Messages, jobSize(c.Rate, c.Batch, tick))
	var deadline time.Time
	if c.Duration > 0 {
		deadline = started.Add(c.Duration)
	}
	jobs := make(chan job, buffer)
	go dispatch(ctx, s, c.Rate, deadline, jobs)
	return jobs
}

// Message states in a ledger.
const (
	stateUnsent    byte = iota
	stateConfirmed      // the broker or server confirmed it
	stateFailed         // publishing failed; it may or may not be stored
)

// ledger records the state of every message of every tenant, by sequence
// number.
type ledger struct {
	mu     sync.Mutex
	states [][]byte
}

func newLedger(tenants int) *ledger {
	return &ledger{states: make([][]byte, tenants)}
}

func (l *ledger) record(j job, confirmed bool) {
	state := stateFailed
	if confirmed {
		state = stateConfirmed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.states[j.tenant]
	if need := j.first + j.n; need > len(s) {
		s = append(s, make([]byte, need-len(s))...)
	}
	for i := j.first; i < j.first+j.n; i++ {
		s[i] = state
	}
	l.states[j.tenant] = s
}

// tenant returns a copy of one tenant's states.
func (l *ledger) tenant(i int) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.states[i]...)
}

// confirmed returns the number of confirmed messages of tenant i.
func (l *ledger) confirmed(i int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.states[i] {
		if s == stateConfirmed {
			n++
		}
	}
	return n
}

// plannedLedger returns the ledger of a publish phase that confirmed every
// message of its -messages plan, for the verify phase.
func plannedLedger(c *Config) *ledger {
	led := newLedger(c.Tenants)
	for i, n := range split(c.Messages, weights(c.Tenants, c.Skew)) {
		if n > 0 {
			led.record(job{tenant: i, n: n}, true)
		}
	}
	return led
}
