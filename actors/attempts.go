package actors

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// attempts counts, per message, the failed tries that sent it back to the
// queue: batches that failed for good and worker crashes. RabbitMQ classic
// queues do not count redeliveries, so the tenant keeps the count in memory.
// It is lost on restart, which at worst allows MaxAttempts more tries.
type attempts struct {
	mu     sync.Mutex
	counts map[string]int
}

func newAttempts() *attempts {
	return &attempts{counts: make(map[string]int)}
}

// attemptKey identifies a message across redeliveries: its message_id, or a
// hash of its body when it has none.
func attemptKey(d *amqp.Delivery) string {
	if d.MessageId != "" {
		return "id:" + d.MessageId
	}
	sum := sha256.Sum256(d.Body)
	return "body:" + hex.EncodeToString(sum[:16])
}

// get returns the failed tries recorded for d. Only a redelivered message
// can have any, so first deliveries skip the lock and the map.
func (a *attempts) get(d *amqp.Delivery) int {
	if !d.Redelivered {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[attemptKey(d)]
}

// fail records one more failed try of d and returns the new count.
func (a *attempts) fail(d *amqp.Delivery) int {
	key := attemptKey(d)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.counts[key]++
	return a.counts[key]
}

// forget drops the count of a message that has been settled for good.
func (a *attempts) forget(d *amqp.Delivery) {
	if !d.Redelivered {
		return
	}
	key := attemptKey(d)
	a.mu.Lock()
	delete(a.counts, key)
	a.mu.Unlock()
}
