// Package persistence stores tenants and their messages in PostgreSQL.
//
// Every tenant owns one LIST partition of the messages table. Messages are
// inserted in batches, one statement per batch, and skipped when their
// (tenant_id, message_id) is already stored, so redelivered messages are
// stored once. Readers page through a tenant's messages with a Position
// cursor that returns every committed message exactly once, also while
// several transactions insert concurrently.
package persistence

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

var (
	// ErrTenantNotFound is returned when no tenant has the requested id.
	ErrTenantNotFound = errors.New("tenant not found")
	// ErrTenantExists is returned when creating a tenant whose id is taken.
	ErrTenantExists = errors.New("tenant already exists")
	// ErrInvalidTenantID is returned for an id that does not match
	// ^[a-z0-9][a-z0-9_-]{0,62}$.
	ErrInvalidTenantID = errors.New("invalid tenant id")
	// ErrInvalidWorkerCount is returned for a worker count below 1.
	ErrInvalidWorkerCount = errors.New("invalid worker count")
)

// Tenant is one tenant's configuration.
type Tenant struct {
	ID          string
	Name        string
	WorkerCount int
	CreatedAt   time.Time
}

// Message is one message to insert.
type Message struct {
	// MessageID is the idempotency key within the tenant; callers generate
	// one when the producer set none.
	MessageID string
	// Payload is the JSON document; callers check that it is valid JSON.
	Payload []byte
	// PublishedAt is when the producer published the message. The zero
	// time means unknown, and InsertBatch stores the current time instead.
	PublishedAt time.Time
}

// Outcome is the result of InsertBatch for one message.
type Outcome int

const (
	// Inserted means the message was stored by this call.
	Inserted Outcome = iota
	// Duplicate means a message with the same (tenant_id, message_id) was
	// already stored, or appeared earlier in the same batch.
	Duplicate
	// Rejected means the message cannot be stored: the database rejected
	// the row, or PublishedAt is outside the range of timestamptz.
	// Result.Err contains the reason. A retry of the same message fails
	// the same way.
	Rejected
)

// String returns the outcome's name in lowercase.
func (o Outcome) String() string {
	switch o {
	case Inserted:
		return "inserted"
	case Duplicate:
		return "duplicate"
	case Rejected:
		return "rejected"
	default:
		return "unknown"
	}
}

// Result is the outcome for one message of a batch.
type Result struct {
	Outcome Outcome
	Err     error // set only when Outcome is Rejected
}

// StoredMessage is a message read back from the database.
type StoredMessage struct {
	ID          int64
	MessageID   string
	Payload     json.RawMessage
	PublishedAt time.Time
	StoredAt    time.Time
	Position    Position
}

// Position is a cursor that points just past one message. The zero value
// points before the first message.
type Position struct {
	TxID uint64 // id of the transaction that stored the message
	ID   int64  // message id within that transaction
}

// Page is one page of ListMessages.
type Page struct {
	Messages []StoredMessage
	// Next is the position of the last message, or the requested position
	// when the page is empty. Polling with it returns newer messages.
	Next Position
	// HasMore reports whether more visible messages follow this page.
	HasMore bool
}

// Store is the storage the server needs.
type Store interface {
	// CreateTenant stores t and creates its partition in one transaction.
	// It returns ErrTenantExists when the id is taken, and an error
	// wrapping ErrInvalidTenantID or ErrInvalidWorkerCount for invalid
	// fields. The returned tenant has CreatedAt set.
	CreateTenant(ctx context.Context, t Tenant) (Tenant, error)
	// GetTenant returns the tenant or ErrTenantNotFound.
	GetTenant(ctx context.Context, id string) (Tenant, error)
	// ListTenants returns every tenant, ordered by created_at, then id.
	ListTenants(ctx context.Context) ([]Tenant, error)
	// SetWorkerCount changes a tenant's worker count and returns the
	// updated tenant, or ErrTenantNotFound.
	SetWorkerCount(ctx context.Context, id string, n int) (Tenant, error)
	// DeleteTenant deletes the tenant and drops its partition, with all
	// its messages, in one transaction; or returns ErrTenantNotFound.
	DeleteTenant(ctx context.Context, id string) error
	// DeleteTenantWith is DeleteTenant that calls beforeCommit inside the
	// transaction, after the row is deleted and the partition dropped, and
	// rolls everything back when it returns an error.
	DeleteTenantWith(ctx context.Context, id string, beforeCommit func(context.Context) error) error
	// InsertBatch stores msgs in one transaction, skipping known message
	// ids. results[i] belongs to msgs[i]. A row the database rejects (for
	// example a JSON string containing \u0000, which jsonb refuses) is
	// Rejected and the rest of the batch still commits. A non-nil error
	// means nothing was committed, unless the connection broke while the
	// statement ran: then the batch may have been stored, and a retry
	// reports its messages as Duplicate. IsRetryable(err) reports whether
	// trying again may succeed. An unknown tenant gives ErrTenantNotFound.
	InsertBatch(ctx context.Context, tenantID string, msgs []Message) ([]Result, error)
	// ListMessages returns up to limit messages after `after`, ordered by
	// Position. A walk followed by polling with Page.Next returns every
	// committed message exactly once, even while several transactions
	// commit concurrently. An unknown tenant has no messages.
	ListMessages(ctx context.Context, tenantID string, after Position, limit int) (Page, error)
	// CountMessages returns the number of stored messages of a tenant.
	CountMessages(ctx context.Context, tenantID string) (int64, error)
	// Ping sends an empty query to the database and waits for its response.
	Ping(ctx context.Context) error
}
