//go:build faults

package faults

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

// drainTimeout bounds the wait for a tenant's queue to empty after a load.
const drainTimeout = 2 * time.Minute

// storedRows is the content of a tenant's partition.
type storedRows struct {
	total    int
	distinct int
	ids      map[string]bool
}

func storedMessages(t *testing.T, databaseURL, tenantID string) storedRows {
	t.Helper()
	var s storedRows
	withConn(t, databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT message_id) FROM messages WHERE tenant_id = $1`,
			tenantID).Scan(&s.total, &s.distinct)
		require.NoError(t, err)
		rows, err := conn.Query(ctx, `SELECT DISTINCT message_id FROM messages WHERE tenant_id = $1`, tenantID)
		require.NoError(t, err)
		defer rows.Close()
		s.ids = make(map[string]bool, s.distinct)
		for rows.Next() {
			var id string
			require.NoError(t, rows.Scan(&id))
			s.ids[id] = true
		}
		require.NoError(t, rows.Err())
	})
	return s
}

// waitDrained waits until the tenant's queue contains no message, ready or
// unacked, and has a consumer: then every delivery has been settled and no
// row can still appear.
func waitDrained(t *testing.T, tenantIDs ...string) {
	t.Helper()
	var last map[string]queueStat
	deadline := time.Now().Add(drainTimeout)
	for {
		last = queueStats(t)
		empty := true
		for _, id := range tenantIDs {
			s, ok := last[transport.QueueName(id)]
			if !ok || s.ready+s.unacked > 0 || s.consumers == 0 {
				empty = false
			}
		}
		if empty {
			return
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, id := range tenantIDs {
				q := transport.QueueName(id)
				lines = append(lines, fmt.Sprintf("%s: %+v", q, last[q]))
			}
			t.Fatalf("queues not drained within %s: %v", drainTimeout, lines)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// requireExactlyOnce checks the tenant's partition against the confirmed
// message ids: as many rows as distinct message ids (nothing stored twice),
// every confirmed id present, and no row beyond them and allowed.
func requireExactlyOnce(t *testing.T, databaseURL, tenantID string, confirmed map[string]bool, allowed ...map[string]bool) storedRows {
	t.Helper()
	s := storedMessages(t, databaseURL, tenantID)
	require.Equal(t, s.distinct, s.total, "tenant %s: rows stored more than once", tenantID)

	// Plain loops: testify's collection asserts scan maps by reflection,
	// which takes minutes for ten thousand ids.
	var missing, unexpected []string
	for id := range confirmed {
		if !s.ids[id] {
			missing = append(missing, id)
		}
	}
	for id := range s.ids {
		if confirmed[id] {
			continue
		}
		known := false
		for _, a := range allowed {
			known = known || a[id]
		}
		if !known {
			unexpected = append(unexpected, id)
		}
	}
	sort.Strings(missing)
	sort.Strings(unexpected)
	require.Empty(t, firstN(missing, 20), "tenant %s: %d confirmed messages not stored", tenantID, len(missing))
	require.Empty(t, firstN(unexpected, 20), "tenant %s: %d stored messages nobody published", tenantID, len(unexpected))
	return s
}

func firstN(s []string, n int) []string { return s[:min(len(s), n)] }

// union returns the union of sets.
func union(sets ...map[string]bool) map[string]bool {
	out := make(map[string]bool)
	for _, s := range sets {
		maps.Copy(out, s)
	}
	return out
}

// deadLetter is one message in a dead-letter queue.
type deadLetter struct {
	messageID string
	reason    string
	attempts  int32
	routedBy  string // x-original-routing-key
	bodyBytes int
}

// deadLetters reads every message of the tenant's dead-letter queue without
// removing it: the messages are fetched unacked and the channel is closed,
// which puts them back.
func deadLetters(t *testing.T, rabbitURL, tenantID string) []deadLetter {
	t.Helper()
	conn, err := amqp.DialConfig(rabbitURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()

	var out []deadLetter
	for range 10000 {
		d, ok, err := ch.Get(transport.DeadLetterQueueName(tenantID), false)
		require.NoError(t, err)
		if !ok {
			return out
		}
		dl := deadLetter{messageID: d.MessageId, bodyBytes: len(d.Body)}
		dl.reason, _ = d.Headers["x-death-reason"].(string)
		dl.attempts, _ = d.Headers["x-attempts"].(int32)
		dl.routedBy, _ = d.Headers["x-original-routing-key"].(string)
		out = append(out, dl)
	}
	t.Fatalf("dead-letter queue of %s contains more than 10000 messages", tenantID)
	return nil
}
