package persistence

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func TestInsertBatchStoresMessages(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "insert")

	msgs := []Message{
		{MessageID: "m-1", Payload: []byte(`{"b": 2, "a": [1, 2, 3]}`), PublishedAt: time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)},
		{MessageID: "m-2", Payload: []byte(`"just a string"`), PublishedAt: time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC)},
		{MessageID: "m-3", Payload: []byte(`null`), PublishedAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))},
	}
	before := time.Now()
	results, err := store.InsertBatch(ctx, tenant.ID, msgs)
	require.NoError(t, err)
	require.Equal(t, repeat(Inserted, 3), outcomes(results))
	for _, r := range results {
		require.NoError(t, r.Err)
	}

	stored := listVisible(t, store, tenant.ID, 10, 3)
	require.Len(t, stored, 3)
	for i, m := range stored {
		require.Equal(t, msgs[i].MessageID, m.MessageID)
		require.JSONEq(t, string(msgs[i].Payload), string(m.Payload))
		require.True(t, msgs[i].PublishedAt.Equal(m.PublishedAt), "published_at %s, stored %s", msgs[i].PublishedAt, m.PublishedAt)
		require.WithinDuration(t, before, m.StoredAt, 5*time.Second)
		require.Equal(t, m.ID, m.Position.ID)
		require.NotZero(t, m.Position.TxID)
	}
	require.Equal(t, stored[0].Position.TxID, stored[2].Position.TxID, "one batch, one transaction")

	n, err := store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.EqualValues(t, 3, n)
}

func TestInsertBatchKeepsInputOrder(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "order")

	ids := []string{"zulu", "alpha", "mike", "Bravo", "0", "écho"}
	msgs := make([]Message, len(ids))
	for i, id := range ids {
		msgs[i] = Message{MessageID: id, Payload: []byte(`{}`)}
	}
	_, err := store.InsertBatch(testContext(t), tenant.ID, msgs)
	require.NoError(t, err)

	stored := listVisible(t, store, tenant.ID, 10, len(ids))
	got := make([]string, len(stored))
	for i, m := range stored {
		got[i] = m.MessageID
	}
	require.Equal(t, ids, got)
}

func TestInsertBatchSkipsKnownMessageIDs(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "dup")

	first := messages("m", 3)
	_, err := store.InsertBatch(ctx, tenant.ID, first)
	require.NoError(t, err)

	again := messages("m", 5) // m-0..m-2 known, m-3 and m-4 new
	again[0].Payload = []byte(`{"changed": true}`)
	results, err := store.InsertBatch(ctx, tenant.ID, again)
	require.NoError(t, err)
	require.Equal(t, []Outcome{Duplicate, Duplicate, Duplicate, Inserted, Inserted}, outcomes(results))

	stored := listVisible(t, store, tenant.ID, 10, 5)
	require.Len(t, stored, 5)
	require.JSONEq(t, string(first[0].Payload), string(stored[0].Payload), "a duplicate overwrote the stored payload")
}

func TestInsertBatchSameMessageIDTwiceInBatch(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "twice")

	msgs := []Message{
		{MessageID: "a", Payload: []byte(`{"copy": 1}`)},
		{MessageID: "b", Payload: []byte(`{}`)},
		{MessageID: "a", Payload: []byte(`{"copy": 2}`)},
		{MessageID: "a", Payload: []byte(`{"copy": 3}`)},
		{MessageID: "", Payload: []byte(`{"empty id": 1}`)},
		{MessageID: "", Payload: []byte(`{"empty id": 2}`)},
	}
	results, err := store.InsertBatch(ctx, tenant.ID, msgs)
	require.NoError(t, err)
	require.Equal(t, []Outcome{Inserted, Inserted, Duplicate, Duplicate, Inserted, Duplicate}, outcomes(results))

	stored := listVisible(t, store, tenant.ID, 10, 3)
	require.Len(t, stored, 3)
	require.JSONEq(t, `{"copy": 1}`, string(stored[0].Payload), "the first copy in the batch must win")
}

func TestInsertBatchSameIDsForTwoTenants(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	one := createTenant(t, store, "one")
	two := createTenant(t, store, "two")

	for _, tenant := range []Tenant{one, two} {
		results, err := store.InsertBatch(ctx, tenant.ID, messages("shared", 2))
		require.NoError(t, err)
		require.Equal(t, repeat(Inserted, 2), outcomes(results), "tenant %s", tenant.ID)
	}
}

// nulPayload is valid JSON that jsonb rejects: \u0000 cannot be stored in
// a PostgreSQL text value.
var nulPayload = []byte(`{"text": "before\u0000after"}`)

func TestInsertBatchIsolatesRejectedRows(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "reject")

	msgs := messages("row", 40)
	bad := map[int]bool{0: true, 7: true, 8: true, 23: true, 39: true}
	for i := range bad {
		msgs[i].Payload = nulPayload
	}
	results, err := store.InsertBatch(ctx, tenant.ID, msgs)
	require.NoError(t, err)
	require.Len(t, results, len(msgs))
	for i, r := range results {
		if !bad[i] {
			require.Equal(t, Inserted, r.Outcome, "row %d", i)
			require.NoError(t, r.Err, "row %d", i)
			continue
		}
		require.Equal(t, Rejected, r.Outcome, "row %d", i)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, r.Err, &pgErr, "row %d", i)
		require.Equal(t, "22P05", pgErr.Code, "row %d: %v", i, r.Err) // untranslatable_character
	}

	stored := listVisible(t, store, tenant.ID, 100, len(msgs)-len(bad))
	require.Len(t, stored, len(msgs)-len(bad))
	for _, m := range stored {
		var i int
		_, err := fmt.Sscanf(m.MessageID, "row-%d", &i)
		require.NoError(t, err)
		require.False(t, bad[i], "rejected row %d was stored", i)
	}
	require.Equal(t, stored[0].Position.TxID, stored[len(stored)-1].Position.TxID,
		"the good rows were not stored in one transaction")

	// A retry of the whole batch stores nothing new and rejects the same rows.
	results, err = store.InsertBatch(ctx, tenant.ID, msgs)
	require.NoError(t, err)
	for i, r := range results {
		want := Duplicate
		if bad[i] {
			want = Rejected
		}
		require.Equal(t, want, r.Outcome, "row %d on retry", i)
	}
}

func TestInsertBatchAllRowsRejected(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "allbad")

	for _, n := range []int{1, 2, 9} {
		msgs := messages(fmt.Sprintf("bad%d", n), n)
		for i := range msgs {
			msgs[i].Payload = nulPayload
		}
		results, err := store.InsertBatch(ctx, tenant.ID, msgs)
		require.NoError(t, err, "batch of %d", n)
		require.Equal(t, repeat(Rejected, n), outcomes(results), "batch of %d", n)
	}
	count, err := store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.Zero(t, count)
}

// randomText returns n characters that pglz cannot compress much, so that
// an index entry for them stays large.
func randomText(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)[:n]
}

func TestInsertBatchRejectsHostileRows(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "hostile")

	hostile := []struct {
		name string
		msg  Message
	}{
		{"nul escape in payload", Message{MessageID: "h-nul", Payload: nulPayload}},
		{"lone surrogate in payload", Message{MessageID: "h-surrogate", Payload: []byte(`["\ud800"]`)}},
		{"invalid json", Message{MessageID: "h-json", Payload: []byte(`{"unterminated": `)}},
		{"nil payload", Message{MessageID: "h-nil", Payload: nil}},
		{"nul byte in message id", Message{MessageID: "h-\x00", Payload: []byte(`{}`)}},
		{"invalid utf-8 in message id", Message{MessageID: "h-\xff\xfe", Payload: []byte(`{}`)}},
		{"message id over the index limit", Message{MessageID: randomText(12000), Payload: []byte(`{}`)}},
		{"published_at far in the future", Message{MessageID: "h-future", Payload: []byte(`{}`), PublishedAt: time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"published_at far in the past", Message{MessageID: "h-past", Payload: []byte(`{}`), PublishedAt: time.Date(-5000, 1, 1, 0, 0, 0, 0, time.UTC)}},
	}
	var msgs []Message
	good := messages("good", len(hostile)+1)
	for i, h := range hostile {
		msgs = append(msgs, good[i], h.msg)
	}
	msgs = append(msgs, good[len(hostile)])

	results, err := store.InsertBatch(ctx, tenant.ID, msgs)
	require.NoError(t, err)
	require.Len(t, results, len(msgs))
	for i, h := range hostile {
		r := results[2*i+1]
		require.Equal(t, Rejected, r.Outcome, h.name)
		require.Error(t, r.Err, h.name)
		require.Less(t, len(r.Err.Error()), 1000, "%s: the error repeats the input", h.name)
		require.Equal(t, Inserted, results[2*i].Outcome, "good row before %s", h.name)
	}
	require.Equal(t, Inserted, results[len(results)-1].Outcome)

	stored := listVisible(t, store, tenant.ID, 100, len(good))
	require.Len(t, stored, len(good))
}

func TestInsertBatchLargePayload(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "large")

	doc, err := json.Marshal(map[string]string{"blob": randomText(4 << 20)})
	require.NoError(t, err)
	results, err := store.InsertBatch(ctx, tenant.ID, []Message{{MessageID: "big", Payload: doc}})
	require.NoError(t, err)
	require.Equal(t, []Outcome{Inserted}, outcomes(results))

	stored := listVisible(t, store, tenant.ID, 1, 1)
	require.JSONEq(t, string(doc), string(stored[0].Payload))
}

func TestInsertBatchZeroPublishedAt(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "zero")

	before := time.Now()
	_, err := store.InsertBatch(testContext(t), tenant.ID, []Message{{MessageID: "z", Payload: []byte(`1`)}})
	require.NoError(t, err)
	stored := listVisible(t, store, tenant.ID, 1, 1)
	require.WithinDuration(t, before, stored[0].PublishedAt, 5*time.Second)
}

func TestInsertBatchEmpty(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "empty")
	results, err := store.InsertBatch(testContext(t), tenant.ID, nil)
	require.NoError(t, err)
	require.Empty(t, results)
}

func TestInsertBatchUnknownTenant(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)

	_, err := store.InsertBatch(ctx, "no-such-tenant", messages("m", 3))
	require.ErrorIs(t, err, ErrTenantNotFound)
	require.False(t, IsRetryable(err))

	for _, id := range []string{"", "Bad", "x'); DROP TABLE messages; --", "a\x00"} {
		_, err := store.InsertBatch(ctx, id, messages("m", 1))
		require.ErrorIs(t, err, ErrInvalidTenantID, "id %q", id)
		require.False(t, IsRetryable(err), "id %q", id)
	}
}

// TestInsertBatchConcurrentOverlappingBatches has several writers insert
// the same message ids in different orders, retrying retryable errors as a
// worker does. Each id must be stored once and reported Inserted once.
func TestInsertBatchConcurrentOverlappingBatches(t *testing.T) {
	t.Parallel()
	store := setup(t, WithMaxConns(8))
	tenant := createTenant(t, store, "overlap")
	// Each deadlock costs deadlock_timeout (1 s by default), so a statement
	// that could deadlock runs into this limit.
	ctx, cancel := context.WithTimeout(testContext(t), 15*time.Second)
	defer cancel()

	const writers, ids = 6, 200
	inserted := make([]int, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			msgs := messages("shared", ids)
			mathrand.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
			for start := 0; start < ids; start += 50 {
				results, err := insertWithRetry(ctx, store, tenant.ID, msgs[start:start+50])
				if err != nil {
					errs[w] = err
					return
				}
				for _, r := range results {
					if r.Outcome == Inserted {
						inserted[w]++
					}
				}
			}
		})
	}
	wg.Wait()

	total := 0
	for w := range writers {
		require.NoError(t, errs[w], "writer %d", w)
		total += inserted[w]
	}
	require.Equal(t, ids, total, "inserted outcomes over all writers")
	n, err := store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.EqualValues(t, ids, n)
}

// insertWithRetry retries retryable errors up to 20 times.
func insertWithRetry(ctx context.Context, store *Postgres, tenantID string, msgs []Message) ([]Result, error) {
	for attempt := 1; ; attempt++ {
		results, err := store.InsertBatch(ctx, tenantID, msgs)
		if err == nil || !IsRetryable(err) || attempt == 20 {
			return results, err
		}
		time.Sleep(time.Duration(attempt) * 5 * time.Millisecond)
	}
}

// blockInsert opens a transaction on its own connection that inserts the
// message id "blocker" and stays open, so that an InsertBatch with that id
// waits for it. The returned function rolls the transaction back.
func blockInsert(t *testing.T, store *Postgres, tenantID string) (release func()) {
	t.Helper()
	return holdInTransaction(t, store, `
		INSERT INTO messages (tenant_id, message_id, payload, published_at)
		VALUES ($1, 'blocker', '{}', now())`, tenantID)
}

// holdInTransaction runs sql in a transaction on a connection of its own
// and keeps the transaction, with its locks, open until release is called
// or the test ends.
func holdInTransaction(t *testing.T, store *Postgres, sql string, args ...any) (release func()) {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, store.Pool().Config().ConnString())
	require.NoError(t, err)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, sql, args...)
	require.NoError(t, err)

	var once sync.Once
	release = func() {
		once.Do(func() {
			_ = tx.Rollback(context.Background())
			_ = conn.Close(context.Background())
		})
	}
	t.Cleanup(release)
	return release
}

// waitingInsertPID returns the backend pid of the InsertBatch that waits
// for a lock in the store's database.
func waitingInsertPID(t *testing.T, store *Postgres) int {
	t.Helper()
	ctx := testContext(t)
	admin, err := pgx.Connect(ctx, store.Pool().Config().ConnString())
	require.NoError(t, err)
	defer admin.Close(context.Background())

	var pid int
	waitFor(t, 10*time.Second, "InsertBatch to wait for the blocking transaction", func() bool {
		err := admin.QueryRow(ctx, `
			SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'
			  AND query LIKE '%unnest%'`).Scan(&pid)
		return err == nil
	})
	return pid
}

func TestInsertBatchTerminatedBackendIsRetryable(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "terminate")
	release := blockInsert(t, store, tenant.ID)

	msgs := []Message{{MessageID: "blocker", Payload: []byte(`1`)}, {MessageID: "other", Payload: []byte(`2`)}}
	done := make(chan error, 1)
	go func() {
		_, err := store.InsertBatch(ctx, tenant.ID, msgs)
		done <- err
	}()
	pid := waitingInsertPID(t, store)

	var terminated bool
	err := store.Pool().QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&terminated)
	require.NoError(t, err)
	require.True(t, terminated)

	select {
	case err := <-done:
		require.Error(t, err)
		require.True(t, IsRetryable(err), "error: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("InsertBatch did not return within 10s after its backend was terminated")
	}

	release()
	results, err := store.InsertBatch(ctx, tenant.ID, msgs)
	require.NoError(t, err, "the pool did not recover from the terminated connection")
	require.Equal(t, []Outcome{Inserted, Inserted}, outcomes(results))
}

func TestInsertBatchCancelledWhileWaiting(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "cancel")
	release := blockInsert(t, store, tenant.ID)

	ctx, cancel := context.WithCancelCause(testContext(t))
	defer cancel(nil)
	shutdown := errors.New("shutting down")
	type outcome struct {
		results []Result
		err     error
	}
	done := make(chan outcome, 1)
	go func() {
		results, err := store.InsertBatch(ctx, tenant.ID, []Message{
			{MessageID: "blocker", Payload: []byte(`1`)},
			{MessageID: "other", Payload: []byte(`2`)},
		})
		done <- outcome{results, err}
	}()
	waitingInsertPID(t, store)
	cancel(shutdown)

	select {
	case got := <-done:
		require.ErrorIs(t, got.err, context.Canceled)
		require.ErrorIs(t, got.err, shutdown)
		require.False(t, IsRetryable(got.err), "error: %v", got.err)
		require.Nil(t, got.results, "a cancelled batch must not report rows as rejected")
	case <-time.After(10 * time.Second):
		t.Fatal("InsertBatch did not return within 10s after its context was cancelled")
	}

	release()
	n, err := store.CountMessages(testContext(t), tenant.ID)
	require.NoError(t, err)
	require.Zero(t, n, "the cancelled batch committed rows")
}

func TestInsertBatchCancelledBeforeStart(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "precancel")

	ctx, cancel := context.WithCancel(testContext(t))
	cancel()
	msgs := messages("m", 3)
	msgs[1].Payload = nulPayload
	results, err := store.InsertBatch(ctx, tenant.ID, msgs)
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, IsRetryable(err))
	require.Nil(t, results)
}

func TestInsertBatchDeadlineIsNotRetryable(t *testing.T) {
	t.Parallel()
	store := setup(t, withAloneLockTimeout(time.Minute))
	tenant := createTenant(t, store, "deadline")
	blockInsert(t, store, tenant.ID)

	ctx, cancel := context.WithTimeout(testContext(t), 300*time.Millisecond)
	defer cancel()
	_, err := store.InsertBatch(ctx, tenant.ID, []Message{{MessageID: "blocker", Payload: []byte(`1`)}})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.False(t, IsRetryable(err))
}

func TestOutcomeString(t *testing.T) {
	t.Parallel()
	require.Equal(t, "inserted", Inserted.String())
	require.Equal(t, "duplicate", Duplicate.String())
	require.Equal(t, "rejected", Rejected.String())
	require.Equal(t, "unknown", Outcome(42).String())
}

func TestNewBatchRejectsOutOfRangeTime(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("x", 5000)
	msgs := []Message{
		{MessageID: id, PublishedAt: time.Date(400000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{MessageID: id, PublishedAt: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	results := make([]Result, len(msgs))
	b := newBatch(msgs, results)
	require.Equal(t, Rejected, results[0].Outcome)
	require.ErrorIs(t, results[0].Err, errPublishedAtRange)
	require.NotContains(t, results[0].Err.Error(), id)
	require.Equal(t, []string{id}, b.ids, "the valid copy must still be sent")
}
