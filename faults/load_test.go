//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/transport"
)

const (
	// loadTimeout bounds how long a producer may take, faults included.
	loadTimeout = 3 * time.Minute
	// confirmTimeout bounds the wait for the confirms of one window.
	confirmTimeout = 15 * time.Second
	// redialMin and redialMax bound a producer's wait between dials.
	redialMin, redialMax = 100 * time.Millisecond, 2 * time.Second
)

// idSet is a set of message ids that goroutines add to.
type idSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func newIDSet() *idSet { return &idSet{ids: make(map[string]bool)} }

func (s *idSet) add(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.ids[id] = true
	}
}

func (s *idSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// snapshot returns a copy of the set.
func (s *idSet) snapshot() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]bool, len(s.ids))
	for id := range s.ids {
		out[id] = true
	}
	return out
}

// amqpProducer publishes count messages with ids prefix-0 .. prefix-(count-1)
// to a tenant over its own connection, as a careful client would: persistent,
// mandatory, on a confirm channel, a window at a time. A message counts as
// confirmed when the broker acked it and did not return it as unroutable.
// After a lost connection, a nack or a return it re-dials and publishes the
// unconfirmed messages again with the same message_id.
type amqpProducer struct {
	url, tenant, prefix string
	count               int
	rate                int // messages per second
	window              int
	body                func(i int) []byte     // default: a small JSON object
	headers             func(i int) amqp.Table // default: none

	confirmed *idSet
	// gate is locked while a window is published and confirmed, so hold
	// pauses the producer between two windows.
	gate        sync.Mutex
	mu          sync.Mutex
	republished int
	dials       int
}

// hold pauses the producer once its current window is confirmed, until
// release.
func (p *amqpProducer) hold() { p.gate.Lock() }

func (p *amqpProducer) release() { p.gate.Unlock() }

func newAMQPProducer(url, tenant, prefix string, count, rate int) *amqpProducer {
	return &amqpProducer{url: url, tenant: tenant, prefix: prefix, count: count, rate: rate,
		window: 20, confirmed: newIDSet()}
}

func (p *amqpProducer) id(i int) string { return fmt.Sprintf("%s-%d", p.prefix, i) }

func (p *amqpProducer) headersOf(i int) amqp.Table {
	if p.headers == nil {
		return nil
	}
	return p.headers(i)
}

func (p *amqpProducer) payload(i int) []byte {
	if p.body != nil {
		return p.body(i)
	}
	return fmt.Appendf(nil, `{"n":%d,"tenant":%q,"via":"amqp"}`, i, p.tenant)
}

// stats returns how many publishes were repeats and how many dials it made.
func (p *amqpProducer) stats() (republished, dials int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.republished, p.dials
}

// start runs the producer in a goroutine and returns a function that waits
// for it and returns its error.
func (p *amqpProducer) start(t *testing.T) func() error {
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	var once sync.Once
	var err error
	wait := func() error {
		once.Do(func() { err = <-done; cancel() })
		return err
	}
	t.Cleanup(func() { cancel(); _ = wait() })
	return wait
}

// run publishes every message and returns once all are confirmed.
func (p *amqpProducer) run(ctx context.Context) error {
	var pending []int // unconfirmed indexes to publish again
	next := 0
	started := time.Now()
	var s *confirmSession
	defer func() { s.close() }()
	for next < p.count || len(pending) > 0 {
		p.gate.Lock()
		if s == nil || s.broken() {
			s.close()
			var err error
			if s, err = p.dial(ctx); err != nil {
				p.gate.Unlock()
				return fmt.Errorf("producer %s: %d of %d confirmed: %w", p.prefix, p.confirmed.len(), p.count, err)
			}
		}

		batch := pending
		pending = nil
		for len(batch) < p.window && next < p.count {
			batch = append(batch, next)
			next++
		}
		failed := p.publishWindow(ctx, s, batch)
		p.gate.Unlock()
		if len(failed) > 0 {
			p.mu.Lock()
			p.republished += len(failed)
			p.mu.Unlock()
			pending = failed
			if !pause(ctx, redialMin) {
				return fmt.Errorf("producer %s: %d of %d confirmed: %w", p.prefix, p.confirmed.len(), p.count, ctx.Err())
			}
		}
		if !pause(ctx, time.Until(started.Add(time.Duration(next)*time.Second/time.Duration(p.rate)))) {
			return fmt.Errorf("producer %s: %d of %d confirmed: %w", p.prefix, p.confirmed.len(), p.count, ctx.Err())
		}
	}
	return nil
}

// publishWindow publishes the messages of batch and returns those not
// confirmed.
func (p *amqpProducer) publishWindow(ctx context.Context, s *confirmSession, batch []int) []int {
	confirms := make([]*amqp.DeferredConfirmation, len(batch))
	for k, i := range batch {
		dc, err := s.ch.PublishWithDeferredConfirmWithContext(ctx, transport.ExchangeName, p.tenant, true, false,
			amqp.Publishing{
				DeliveryMode: amqp.Persistent,
				ContentType:  "application/json",
				MessageId:    p.id(i),
				Timestamp:    time.Now(),
				Headers:      p.headersOf(i),
				Body:         p.payload(i),
			})
		if err != nil {
			s.fail()
			return batch
		}
		confirms[k] = dc
	}

	wait, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	var failed []int
	for k, dc := range confirms {
		if ok, err := dc.WaitContext(wait); err != nil || !ok {
			s.fail()
			failed = append(failed, batch[k])
		}
	}
	// The broker sends basic.return before the confirm of the same
	// message, so every return of this window is buffered by now.
	returned := s.drainReturns()
	var ok []string
	for k, i := range batch {
		if returned[p.id(i)] || !confirms[k].Acked() {
			if confirms[k].Acked() {
				failed = append(failed, batch[k])
			}
			continue
		}
		ok = append(ok, p.id(i))
	}
	p.confirmed.add(ok...)
	return failed
}

// dial opens a connection and a confirm channel, retrying with backoff
// until ctx ends.
func (p *amqpProducer) dial(ctx context.Context) (*confirmSession, error) {
	wait := redialMin
	for {
		p.mu.Lock()
		p.dials++
		p.mu.Unlock()
		s, err := openConfirmSession(p.url, "faults-producer-"+p.prefix, p.window)
		if err == nil {
			return s, nil
		}
		if !pause(ctx, wait) {
			return nil, errors.Join(ctx.Err(), err)
		}
		wait = min(2*wait, redialMax)
	}
}

// confirmSession is a connection with one channel in confirm mode.
type confirmSession struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	failed  bool
}

func openConfirmSession(url, name string, window int) (*confirmSession, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: props, Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 2*window))
	return &confirmSession{conn: conn, ch: ch, returns: returns}, nil
}

func (s *confirmSession) fail() { s.failed = true }

func (s *confirmSession) broken() bool { return s.failed || s.conn.IsClosed() || s.ch.IsClosed() }

func (s *confirmSession) drainReturns() map[string]bool {
	out := make(map[string]bool)
	for {
		select {
		case r, ok := <-s.returns:
			if !ok {
				return out
			}
			out[r.MessageId] = true
		default:
			return out
		}
	}
}

func (s *confirmSession) close() {
	if s != nil {
		_ = s.conn.Close()
	}
}

// pause sleeps for d and reports false when ctx ended first.
func pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// httpProducer publishes count messages with ids prefix-0 .. prefix-(count-1)
// through POST /api/v1/messages in batches. A batch that gets any status
// but 202 is sent again with the same ids after a pause, and only a 202
// confirms it.
type httpProducer struct {
	e      *env
	token  string
	prefix string
	count  int
	batch  int
	rate   int // messages per second

	confirmed *idSet
	mu        sync.Mutex
	statuses  map[int]int // responses other than 202 by status, 0 for no response
	slowest   map[int]time.Duration
	samples   []string // the first bodies or errors of failed requests
}

func newHTTPProducer(e *env, token, prefix string, count, rate int) *httpProducer {
	return &httpProducer{e: e, token: token, prefix: prefix, count: count, batch: 50, rate: rate,
		confirmed: newIDSet(), statuses: make(map[int]int), slowest: make(map[int]time.Duration)}
}

// failures returns a copy of the non-202 counts and the slowest response
// for each status.
func (p *httpProducer) failures() (map[int]int, map[int]time.Duration, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	counts := make(map[int]int, len(p.statuses))
	slowest := make(map[int]time.Duration, len(p.slowest))
	for k, v := range p.statuses {
		counts[k] = v
		slowest[k] = p.slowest[k]
	}
	return counts, slowest, append([]string(nil), p.samples...)
}

func (p *httpProducer) start(t *testing.T) func() error {
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	var once sync.Once
	var err error
	wait := func() error {
		once.Do(func() { err = <-done; cancel() })
		return err
	}
	t.Cleanup(func() { cancel(); _ = wait() })
	return wait
}

func (p *httpProducer) run(ctx context.Context) error {
	started := time.Now()
	for from := 0; from < p.count; from += p.batch {
		ids, msgs := p.messages(from, min(from+p.batch, p.count))
		for !p.send(msgs) {
			if !pause(ctx, 200*time.Millisecond) {
				return fmt.Errorf("http producer %s: %d of %d confirmed: %w", p.prefix, p.confirmed.len(), p.count, ctx.Err())
			}
		}
		p.confirmed.add(ids...)
		due := started.Add(time.Duration(from+p.batch) * time.Second / time.Duration(p.rate))
		if !pause(ctx, time.Until(due)) {
			return fmt.Errorf("http producer %s: %w", p.prefix, ctx.Err())
		}
	}
	return nil
}

func (p *httpProducer) messages(from, to int) ([]string, []map[string]any) {
	ids := make([]string, 0, to-from)
	msgs := make([]map[string]any, 0, to-from)
	for i := from; i < to; i++ {
		id := fmt.Sprintf("%s-%d", p.prefix, i)
		ids = append(ids, id)
		msgs = append(msgs, map[string]any{"message_id": id, "payload": map[string]any{"n": i, "via": "http"}})
	}
	return ids, msgs
}

// send posts one batch and reports whether it was accepted.
func (p *httpProducer) send(msgs []map[string]any) bool {
	started := time.Now()
	status, data, err := do(http.MethodPost, p.e.url("/api/v1/messages"), p.token, map[string]any{"messages": msgs})
	took := time.Since(started)
	if err == nil && status == http.StatusAccepted {
		var res struct {
			Accepted int `json:"accepted"`
		}
		if json.Unmarshal(data, &res) == nil && res.Accepted == len(msgs) {
			return true
		}
	}
	sample := string(data)
	if err != nil {
		status, sample = 0, err.Error()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.samples) < 3 {
		p.samples = append(p.samples, fmt.Sprintf("%d %s", status, sample))
	}
	p.statuses[status]++
	p.slowest[status] = max(p.slowest[status], took)
	return false
}
