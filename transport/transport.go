// Package transport connects the server to RabbitMQ.
//
// A Broker owns two AMQP connections, one for consuming and one for
// publishing, because RabbitMQ may block a publishing connection under a
// resource alarm and consumers must keep running then. Both connections are
// re-dialled with exponential backoff and jitter until Close. The package
// declares the per-tenant topology, publishes with publisher confirms and
// hands out one Consumer per tenant channel.
//
// Topology for tenant <id>: the durable direct exchange "messages" routes
// key <id> to the durable queue "tenant.<id>", which dead-letters through
// the default exchange to the durable queue "tenant.<id>.dlq".
package transport

import (
	"errors"
	"fmt"
	"regexp"
)

// ErrUnavailable means the broker cannot be used right now: a connection is
// down, the broker blocks publishing, the Broker is closed, or a confirm did
// not arrive in time. Trying again later may succeed.
var ErrUnavailable = errors.New("broker unavailable")

// ErrNacked means the broker returned a negative confirm (basic.nack) for a
// message, so it was not stored.
var ErrNacked = errors.New("broker rejected the message")

// ErrUnroutable means the broker confirmed a message but no queue was bound
// for its routing key, so it was dropped. For Publish this means the
// tenant's queue does not exist.
var ErrUnroutable = errors.New("message is unroutable")

// ErrTopologyConflict means a queue or exchange already exists with other
// properties or arguments than this package declares (PRECONDITION_FAILED).
var ErrTopologyConflict = errors.New("existing broker topology conflicts")

// ErrQueueNotFound means a tenant's queue does not exist.
var ErrQueueNotFound = errors.New("queue not found")

// ErrConsumerCancelled means the broker cancelled a consumer, usually
// because its queue was deleted.
var ErrConsumerCancelled = errors.New("consumer cancelled by the broker")

// ErrInvalidTenantID means a tenant id does not match TenantIDPattern.
var ErrInvalidTenantID = errors.New("invalid tenant id")

// ExchangeName is the direct exchange that routes messages to tenant queues
// by tenant id.
const ExchangeName = "messages"

// TenantIDPattern is the form of a tenant id. It keeps queue names short and
// free of the characters that AMQP topic patterns and URLs treat specially.
const TenantIDPattern = `^[a-z0-9][a-z0-9_-]{0,62}$`

var tenantIDRegexp = regexp.MustCompile(TenantIDPattern)

// Dead-letter reasons stored in the x-death-reason header.
const (
	ReasonInvalidJSON = "invalid_json"
	ReasonTooLarge    = "too_large"
	ReasonRejected    = "rejected"
	ReasonMaxAttempts = "max_attempts"
)

// Headers that DeadLetter and Publish set.
const (
	HeaderPublishedAt        = "x-published-at"
	HeaderDeathReason        = "x-death-reason"
	HeaderDeathDetail        = "x-death-detail"
	HeaderAttempts           = "x-attempts"
	HeaderOriginalRoutingKey = "x-original-routing-key"
)

// QueueName returns the name of the tenant's queue.
func QueueName(tenantID string) string {
	return "tenant." + tenantID
}

// DeadLetterQueueName returns the name of the tenant's dead-letter queue.
func DeadLetterQueueName(tenantID string) string {
	return QueueName(tenantID) + ".dlq"
}

// ValidateTenantID returns an error wrapping ErrInvalidTenantID when id does
// not match TenantIDPattern.
func ValidateTenantID(id string) error {
	if !tenantIDRegexp.MatchString(id) {
		return fmt.Errorf("%w %q: must match %s", ErrInvalidTenantID, id, TenantIDPattern)
	}
	return nil
}

func validReason(reason string) bool {
	switch reason {
	case ReasonInvalidJSON, ReasonTooLarge, ReasonRejected, ReasonMaxAttempts:
		return true
	}
	return false
}
