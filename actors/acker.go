package actors

import (
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// delivery is a message of one consumer's channel, routed to a worker.
type delivery struct {
	*amqp.Delivery
	acks *acker
}

// acker coalesces the acks of one consumer channel. Workers settle
// deliveries in any order; once every tag up to n is settled, one ack with
// multiple=true covers the acked ones among them. That costs the broker one
// frame per run of settled deliveries instead of one per delivery.
//
// A plain multiple ack from a worker would be wrong: the channel is shared
// by all the tenant's workers, and it would also ack deliveries another
// worker has not stored yet. Nacks are sent at once, one by one; a later
// multiple ack skips them because they are no longer outstanding.
type acker struct {
	mu      sync.Mutex
	next    uint64          // lowest tag not yet settled; tags start at 1
	settled map[uint64]bool // settled tags above next; true means it needs an ack
}

func newAcker() *acker {
	return &acker{next: 1, settled: make(map[uint64]bool)}
}

// ack records that every delivery of ds was stored and sends the acks
// that makes possible: one, for a worker that settles its batch in order.
func (a *acker) ack(ds ...*amqp.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, d := range ds {
		a.settled[d.DeliveryTag] = true
	}
	return a.advance(ds[0].Acknowledger)
}

// nack returns d to the queue and records it as settled.
func (a *acker) nack(d *amqp.Delivery) error {
	err := d.Nack(false, true)
	if sErr := a.settle(d, false); err == nil {
		err = sErr
	}
	return err
}

// settle records one delivery.
func (a *acker) settle(d *amqp.Delivery, needsAck bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.settled[d.DeliveryTag] = needsAck
	return a.advance(d.Acknowledger)
}

// advance moves next past the settled run and, when the run holds
// deliveries to ack, acks its last one with multiple=true. The caller holds
// the lock, and the ack is sent under it: two multiple acks that overtook
// each other would ack an unknown tag, which closes the channel.
func (a *acker) advance(ch amqp.Acknowledger) error {
	ackUpTo := uint64(0)
	for {
		v, ok := a.settled[a.next]
		if !ok {
			break
		}
		delete(a.settled, a.next)
		if v {
			ackUpTo = a.next
		}
		a.next++
	}
	if ackUpTo == 0 {
		return nil
	}
	return ch.Ack(ackUpTo, true)
}
