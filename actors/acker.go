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

// ack records that d was stored and sends the acks it makes possible.
func (a *acker) ack(d *amqp.Delivery) error {
	return a.settle(d, true)
}

// nack returns d to the queue and records it as settled.
func (a *acker) nack(d *amqp.Delivery) error {
	err := d.Nack(false, true)
	if sErr := a.settle(d, false); err == nil {
		err = sErr
	}
	return err
}

// settle records d and, when the settled run from next has grown, acks the
// run's last tag with multiple=true. The ack is sent under the lock: two
// multiple acks that overtook each other would ack an unknown tag, which
// closes the channel.
func (a *acker) settle(d *amqp.Delivery, needsAck bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.settled[d.DeliveryTag] = needsAck

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
	return d.Acknowledger.Ack(ackUpTo, true)
}
