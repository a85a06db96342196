package main

import (
	"context"
	"fmt"
	"time"
)

// pollInterval is the pause between two rounds of counting stored rows.
const pollInterval = 100 * time.Millisecond

// waitStored polls src until every tenant has at least as many rows as it
// has confirmed messages, or until timeout. An error from abort (nil for
// none) ends the wait early with that error. After a timeout it returns the
// last count error, if any; the verification reports what is missing.
func waitStored(ctx context.Context, src rowSource, led *ledger, timeout time.Duration, prog progress, abort <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stored := make([]int, len(led.states))
	var lastErr error
	for {
		done, total := true, 0
		for i := range stored {
			want := led.confirmed(i)
			if stored[i] < want {
				n, err := src.count(ctx, i)
				if err != nil {
					lastErr = err
				} else {
					stored[i] = n
				}
			}
			total += stored[i]
			done = done && stored[i] >= want
		}
		prog.set(total)
		if done {
			return nil
		}

		select {
		case err := <-abort:
			return err
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("not every message was stored within %s; last error: %w", timeout, lastErr)
			}
			return nil
		case <-time.After(pollInterval):
		}
	}
}

// tally is the verification result of one tenant.
type tally struct {
	published   int // confirmed messages
	failed      int // publishes that failed
	stored      int // rows, duplicates included
	missing     int // confirmed messages with no row
	duplicates  int // rows beyond the first of a message
	unexpected  int // rows of messages that were never confirmed
	latencies   []float64
	firstStored time.Time
	lastStored  time.Time
}

// verify compares one tenant's rows with its ledger states: every
// confirmed message must have exactly one row. Latency is stored_at minus
// published_at of each message's first row, in milliseconds.
func verify(states []byte, rows []row) tally {
	var t tally
	seen := make([]uint32, len(states))
	for _, s := range states {
		switch s {
		case stateConfirmed:
			t.published++
		case stateFailed:
			t.failed++
		}
	}

	t.stored = len(rows)
	t.latencies = make([]float64, 0, len(rows))
	for _, r := range rows {
		seq, ok := parseMessageID(r.messageID)
		if !ok || seq >= len(states) || states[seq] != stateConfirmed {
			t.unexpected++
			continue
		}
		seen[seq]++
		if seen[seq] > 1 {
			t.duplicates++
			continue
		}
		t.latencies = append(t.latencies, float64(r.storedAt.Sub(r.publishedAt))/float64(time.Millisecond))
		t.observeStored(r.storedAt)
	}

	for seq, s := range states {
		if s == stateConfirmed && seen[seq] == 0 {
			t.missing++
		}
	}
	return t
}

func (t *tally) observeStored(at time.Time) {
	if t.firstStored.IsZero() || at.Before(t.firstStored) {
		t.firstStored = at
	}
	if at.After(t.lastStored) {
		t.lastStored = at
	}
}

// verifyAll reads and verifies every tenant's rows.
func verifyAll(ctx context.Context, src rowSource, led *ledger) ([]tally, error) {
	out := make([]tally, len(led.states))
	for i := range out {
		rows, err := src.rows(ctx, i)
		if err != nil {
			return nil, err
		}
		out[i] = verify(led.tenant(i), rows)
	}
	return out, nil
}
