package persistence

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every test's database calls and waits.
const testTimeout = 45 * time.Second

// testContext returns a context that ends with the test or after
// testTimeout, whichever comes first.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// setup returns a Postgres on a fresh, migrated database that is dropped
// when the test ends.
func setup(t testing.TB, opts ...Option) *Postgres {
	t.Helper()
	store := openStore(t, testenv.NewDatabase(t), opts...)
	require.NoError(t, store.Migrate(testContext(t)))
	return store
}

// openStore opens databaseURL and closes the store when the test ends.
func openStore(t testing.TB, databaseURL string, opts ...Option) *Postgres {
	t.Helper()
	store, err := Open(testContext(t), databaseURL, nil, opts...)
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return store
}

// createTenant creates a tenant with a unique id starting with prefix.
func createTenant(t testing.TB, store *Postgres, prefix string) Tenant {
	t.Helper()
	tenant, err := store.CreateTenant(testContext(t), Tenant{
		ID:          testenv.TenantID(prefix),
		Name:        "Tenant " + prefix,
		WorkerCount: 2,
	})
	require.NoError(t, err)
	return tenant
}

// messages returns n messages with ids prefix-0 .. prefix-(n-1).
func messages(prefix string, n int) []Message {
	msgs := make([]Message, n)
	published := time.Now().Truncate(time.Microsecond)
	for i := range msgs {
		msgs[i] = Message{
			MessageID:   fmt.Sprintf("%s-%d", prefix, i),
			Payload:     fmt.Appendf(nil, `{"n": %d, "prefix": %q}`, i, prefix),
			PublishedAt: published,
		}
	}
	return msgs
}

// outcomes returns the Outcome of each result.
func outcomes(results []Result) []Outcome {
	out := make([]Outcome, len(results))
	for i, r := range results {
		out[i] = r.Outcome
	}
	return out
}

// repeat returns n copies of o.
func repeat(o Outcome, n int) []Outcome {
	out := make([]Outcome, n)
	for i := range out {
		out[i] = o
	}
	return out
}

// listAll walks every visible message of the tenant, limit at a time.
func listAll(t testing.TB, store *Postgres, tenantID string, limit int) []StoredMessage {
	t.Helper()
	ctx := testContext(t)
	var all []StoredMessage
	var after Position
	for {
		page, err := store.ListMessages(ctx, tenantID, after, limit)
		require.NoError(t, err)
		all = append(all, page.Messages...)
		after = page.Next
		if !page.HasMore {
			return all
		}
	}
}

// listVisible walks the tenant's messages until want of them are visible,
// and fails the test after 15 s. Rows become visible once every older
// writing transaction of the cluster has ended, and other tests running in
// parallel keep such transactions open for a moment.
func listVisible(t testing.TB, store *Postgres, tenantID string, limit, want int) []StoredMessage {
	t.Helper()
	var all []StoredMessage
	waitFor(t, 15*time.Second, fmt.Sprintf("%d visible messages of %s", want, tenantID), func() bool {
		all = listAll(t, store, tenantID, limit)
		return len(all) >= want
	})
	return all
}

// waitFor polls cond every 10 ms until it returns true, and fails the test
// after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
