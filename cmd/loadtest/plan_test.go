package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWeightsSkew(t *testing.T) {
	t.Parallel()
	require.Equal(t, []float64{0.25, 0.25, 0.25, 0.25}, weights(4, 0))
	w := weights(10, 0.9)
	require.InDelta(t, 0.9, w[0], 1e-12)
	for _, share := range w[1:] {
		require.InDelta(t, 0.1/9, share, 1e-12)
	}
	require.Equal(t, []float64{1}, weights(1, 0.9), "one tenant takes all")
}

func TestSplitAddsUp(t *testing.T) {
	t.Parallel()
	for _, total := range []int{1, 7, 1000, 3001} {
		for _, w := range [][]float64{weights(3, 0), weights(10, 0.9), weights(7, 1)} {
			counts := split(total, w)
			sum := 0
			for _, n := range counts {
				sum += n
			}
			require.Equal(t, total, sum, "total %d weights %v", total, w)
		}
	}
	require.Equal(t, []int{900, 25, 25, 25, 25}, split(1000, weights(5, 0.9)))
}

func TestSchedulerPlansEveryMessageOnce(t *testing.T) {
	t.Parallel()
	s := newScheduler(weights(3, 0.5), 1001, 10)
	next := make([]int, 3)
	total := 0
	for {
		j, ok := s.take()
		if !ok {
			break
		}
		require.Equal(t, next[j.tenant], j.first, "jobs of a tenant are consecutive")
		require.LessOrEqual(t, j.n, 10)
		next[j.tenant] += j.n
		total += j.n
	}
	require.Equal(t, 1001, total)
	require.Equal(t, split(1001, weights(3, 0.5)), next)
}

func TestSchedulerInterleavesTenants(t *testing.T) {
	t.Parallel()
	s := newScheduler(weights(2, 0), 0, 1)
	var order []int
	for range 6 {
		j, ok := s.take()
		require.True(t, ok, "an unbounded plan never ends")
		order = append(order, j.tenant)
	}
	require.Equal(t, []int{0, 1, 0, 1, 0, 1}, order)
}

func TestJobSize(t *testing.T) {
	t.Parallel()
	require.Equal(t, 100, jobSize(0, 100, time.Millisecond), "flat out uses the batch")
	require.Equal(t, 5, jobSize(5000, 100, time.Millisecond))
	require.Equal(t, 1, jobSize(10, 100, time.Millisecond), "never below one")
	require.Equal(t, 100, jobSize(1e6, 100, time.Millisecond), "never above the batch")
}

func TestDispatchHoldsRate(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := make(chan job)
	started := time.Now()
	go dispatch(ctx, newScheduler(weights(2, 0), 200, 10), 1000, time.Time{}, out)
	n := 0
	for j := range out {
		n += j.n
	}
	require.Equal(t, 200, n)
	// The last job is due after 190 messages at 1000/s.
	require.GreaterOrEqual(t, time.Since(started), 190*time.Millisecond)
}

func TestDispatchStopsAtDeadline(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := make(chan job)
	go dispatch(ctx, newScheduler(weights(1, 0), 0, 1), 100, time.Now().Add(200*time.Millisecond), out)
	n := 0
	for j := range out {
		n += j.n
	}
	// The rate bounds the count from above; a loaded machine may dispatch
	// fewer before the deadline.
	require.Positive(t, n)
	require.LessOrEqual(t, n, 23, "200ms at 100 messages per second")
}

func TestMessageIDRoundTrip(t *testing.T) {
	t.Parallel()
	seq, ok := parseMessageID(messageID(42))
	require.True(t, ok)
	require.Equal(t, 42, seq)
	for _, id := range []string{"", "msg-", "msg--1", "msg-01", "msg-1x", "other-1", "msg-99999999999999999999"} {
		_, ok := parseMessageID(id)
		require.False(t, ok, "id %q", id)
	}
}

func TestPayloadSize(t *testing.T) {
	t.Parallel()
	for _, size := range []int{minPayloadBytes, 256, 4096} {
		p := payload(1234567890, size)
		require.Len(t, p, size)
		require.True(t, json.Valid(p), "payload %s", p)
	}
	require.JSONEq(t, `{"seq":7,"pad":""}`, string(payload(7, 1)), "a size below the minimum gets no padding")
}
