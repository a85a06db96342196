package transport

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// returnBuffer is the capacity of a confirm channel's basic.return queue.
// The publishing goroutine drains it while it waits for confirms, so it
// only has to absorb bursts.
const returnBuffer = 64

// confirmChannel is a channel of the publish connection in confirm mode.
// One caller at a time owns it, so every basic.return on it belongs to the
// owner's messages.
type confirmChannel struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	closes  chan *amqp.Error
	returns chan amqp.Return
}

func (cc *confirmChannel) usable() bool {
	return !cc.ch.IsClosed() && !cc.conn.IsClosed()
}

// pool hands out confirm channels. A slot holds nil until its channel is
// first needed, and again after the channel died; acquire opens a new one.
type pool struct {
	link  *link
	done  <-chan struct{} // closed by Broker.Close
	slots chan *confirmChannel
}

func newPool(l *link, done <-chan struct{}, size int) *pool {
	p := &pool{link: l, done: done, slots: make(chan *confirmChannel, size)}
	for range size {
		p.slots <- nil
	}
	return p
}

// run publishes pubs on a pooled channel and waits for every confirm.
func (p *pool) run(ctx context.Context, exchange, key string, pubs []amqp.Publishing) error {
	cc, err := p.acquire(ctx)
	if err != nil {
		return err
	}

	settled, err := cc.publishAll(ctx, exchange, key, pubs)
	// When confirms are still outstanding, late confirms and returns could
	// reach the next owner, so the channel is replaced instead.
	p.release(cc, settled)
	return err
}

func (p *pool) acquire(ctx context.Context) (*confirmChannel, error) {
	var cc *confirmChannel
	select {
	case cc = <-p.slots:
	case <-ctx.Done():
		return nil, timedOut(ctx, "wait for a free publish channel")
	case <-p.done:
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, errBrokerClosed)
	}

	if err := p.link.blockedErr(); err != nil {
		p.slots <- cc
		return nil, err
	}
	if cc != nil && cc.usable() {
		return cc, nil
	}
	if cc != nil {
		closeChannel(cc.ch)
	}

	cc, err := p.open()
	if err != nil {
		p.slots <- nil
		return nil, err
	}
	return cc, nil
}

// open opens a confirm channel and declares the exchange on it, which
// restores the exchange if someone deleted it while the connection stayed
// up.
func (p *pool) open() (*confirmChannel, error) {
	conn, err := p.link.current()
	if err != nil {
		return nil, err
	}

	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open publish channel: %w", classify(err))
	}
	if err := ch.Confirm(false); err != nil {
		closeChannel(ch)
		return nil, fmt.Errorf("enable publisher confirms: %w", classify(err))
	}
	err = ch.ExchangeDeclare(ExchangeName, amqp.ExchangeDirect, true, false, false, false, nil)
	if err != nil {
		closeChannel(ch)
		return nil, fmt.Errorf("declare exchange %s: %w", ExchangeName, classifyDeclare(err))
	}

	return &confirmChannel{
		conn:    conn,
		ch:      ch,
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		returns: ch.NotifyReturn(make(chan amqp.Return, returnBuffer)),
	}, nil
}

func (p *pool) release(cc *confirmChannel, keep bool) {
	if !keep || !cc.usable() {
		closeChannel(cc.ch)
		cc = nil
	}
	p.slots <- cc
}
