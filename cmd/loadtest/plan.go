package main

import (
	"context"
	"time"
)

// job is a run of consecutive messages for one tenant: sequence numbers
// first to first+n-1.
type job struct {
	tenant int
	first  int
	n      int
}

// weights returns each tenant's share of the load: skew for the first
// tenant and the rest split evenly, or an even split when skew is 0.
func weights(tenants int, skew float64) []float64 {
	w := make([]float64, tenants)
	if skew == 0 || tenants == 1 {
		for i := range w {
			w[i] = 1 / float64(tenants)
		}
		return w
	}
	w[0] = skew
	for i := 1; i < tenants; i++ {
		w[i] = (1 - skew) / float64(tenants-1)
	}
	return w
}

// split divides total messages by the weights with the largest-remainder
// method, so the counts add up to total exactly.
func split(total int, w []float64) []int {
	counts := make([]int, len(w))
	rest := make([]float64, len(w))
	assigned := 0
	for i, share := range w {
		exact := share * float64(total)
		counts[i] = int(exact)
		rest[i] = exact - float64(counts[i])
		assigned += counts[i]
	}
	for ; assigned < total; assigned++ {
		best := 0
		for i := range rest {
			if rest[i] > rest[best] {
				best = i
			}
		}
		counts[best]++
		rest[best] = -1
	}
	return counts
}

// scheduler hands out jobs in smooth weighted round-robin order, so every
// tenant's messages are spread over the run instead of sent in one block.
type scheduler struct {
	weights   []float64
	current   []float64
	next      []int // next sequence number of each tenant
	remaining []int // messages left per tenant; nil when unbounded
	jobSize   int
}

// newScheduler plans total messages (0 means unbounded) in jobs of up to
// jobSize messages.
func newScheduler(w []float64, total, jobSize int) *scheduler {
	s := &scheduler{
		weights: w,
		current: make([]float64, len(w)),
		next:    make([]int, len(w)),
		jobSize: jobSize,
	}
	if total > 0 {
		s.remaining = split(total, w)
	}
	return s
}

// take returns the next job, or false when every message is planned.
func (s *scheduler) take() (job, bool) {
	best, sum := -1, 0.0
	for i, w := range s.weights {
		if w == 0 || (s.remaining != nil && s.remaining[i] == 0) {
			continue
		}
		s.current[i] += w
		sum += w
		if best < 0 || s.current[i] > s.current[best] {
			best = i
		}
	}
	if best < 0 {
		return job{}, false
	}
	s.current[best] -= sum

	n := s.jobSize
	if s.remaining != nil {
		n = min(n, s.remaining[best])
		s.remaining[best] -= n
	}
	j := job{tenant: best, first: s.next[best], n: n}
	s.next[best] += n
	return j, true
}

// jobSize returns the messages per job: batch when flat out, and about one
// tick of messages at a fixed rate, so that the offered load stays smooth.
func jobSize(rate float64, batch int, tick time.Duration) int {
	if rate == 0 {
		return batch
	}
	return max(1, min(batch, int(rate*tick.Seconds())))
}

// dispatch sends the scheduler's jobs to out at rate messages per second
// (0 is flat out) until the plan ends, the deadline passes (when not zero)
// or ctx ends. It closes out.
func dispatch(ctx context.Context, s *scheduler, rate float64, deadline time.Time, out chan<- job) {
	defer close(out)
	start := time.Now()
	sent := 0
	for {
		j, ok := s.take()
		if !ok {
			return
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
			if !sleepUntil(ctx, due) {
				return
			}
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return
		}
		select {
		case out <- j:
			sent += j.n
		case <-ctx.Done():
			return
		}
	}
}

// sleepUntil waits until t and reports false when ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
