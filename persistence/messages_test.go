package persistence

import (
	"context"
	"fmt"
	"math"
	mathrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// less reports whether a sorts before b in the order ListMessages uses.
func less(a, b Position) bool {
	return a.TxID < b.TxID || (a.TxID == b.TxID && a.ID < b.ID)
}

func TestListMessagesPaginates(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "pages")

	var want []string
	for b, n := range []int{10, 10, 5} {
		msgs := messages(fmt.Sprintf("b%d", b), n)
		_, err := store.InsertBatch(ctx, tenant.ID, msgs)
		require.NoError(t, err)
		for _, m := range msgs {
			want = append(want, m.MessageID)
		}
	}
	listVisible(t, store, tenant.ID, 100, len(want))

	var got []string
	var after Position
	for i, size := range []int{10, 10, 5} {
		page, err := store.ListMessages(ctx, tenant.ID, after, 10)
		require.NoError(t, err)
		require.Len(t, page.Messages, size, "page %d", i)
		require.Equal(t, i < 2, page.HasMore, "page %d", i)
		require.Equal(t, page.Messages[len(page.Messages)-1].Position, page.Next, "page %d", i)
		for _, m := range page.Messages {
			require.True(t, less(after, m.Position), "page %d is not in order", i)
			after = m.Position
			got = append(got, m.MessageID)
		}
	}
	require.Equal(t, want, got)

	page, err := store.ListMessages(ctx, tenant.ID, after, 10)
	require.NoError(t, err)
	require.Empty(t, page.Messages)
	require.False(t, page.HasMore)
	require.Equal(t, after, page.Next, "an empty page must keep the cursor")
}

func TestListMessagesExactLimitHasNoMore(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "exact")
	_, err := store.InsertBatch(testContext(t), tenant.ID, messages("m", 4))
	require.NoError(t, err)
	listVisible(t, store, tenant.ID, 100, 4)

	page, err := store.ListMessages(testContext(t), tenant.ID, Position{}, 4)
	require.NoError(t, err)
	require.Len(t, page.Messages, 4)
	require.False(t, page.HasMore)
}

func TestListMessagesLimit(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "limit")
	_, err := store.InsertBatch(ctx, tenant.ID, messages("m", 3))
	require.NoError(t, err)
	listVisible(t, store, tenant.ID, 100, 3)

	for _, limit := range []int{0, -1, math.MinInt} {
		_, err := store.ListMessages(ctx, tenant.ID, Position{}, limit)
		require.Error(t, err, "limit %d", limit)
	}
	for _, limit := range []int{1, MaxListLimit, MaxListLimit + 1, math.MaxInt} {
		page, err := store.ListMessages(ctx, tenant.ID, Position{}, limit)
		require.NoError(t, err, "limit %d", limit)
		require.Len(t, page.Messages, min(limit, 3), "limit %d", limit)
	}
}

func TestListMessagesUnknownTenantAndOddPositions(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "odd")
	_, err := store.InsertBatch(ctx, tenant.ID, messages("m", 2))
	require.NoError(t, err)
	listVisible(t, store, tenant.ID, 100, 2)

	for _, id := range []string{"missing", "", "Bad'; --", "a\x00b"} {
		page, err := store.ListMessages(ctx, id, Position{}, 10)
		require.NoError(t, err, "tenant %q", id)
		require.Empty(t, page.Messages, "tenant %q", id)
		n, err := store.CountMessages(ctx, id)
		require.NoError(t, err)
		require.Zero(t, n, "tenant %q", id)
	}

	for _, after := range []Position{
		{TxID: math.MaxUint64, ID: math.MaxInt64},
		{TxID: math.MaxUint64, ID: math.MinInt64},
	} {
		page, err := store.ListMessages(ctx, tenant.ID, after, 10)
		require.NoError(t, err, "position %+v", after)
		require.Empty(t, page.Messages, "position %+v", after)
		require.Equal(t, after, page.Next)
	}
	page, err := store.ListMessages(ctx, tenant.ID, Position{TxID: 0, ID: math.MinInt64}, 10)
	require.NoError(t, err)
	require.Len(t, page.Messages, 2)
}

func TestListMessagesSeparatesTenants(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	one := createTenant(t, store, "one")
	two := createTenant(t, store, "two")
	_, err := store.InsertBatch(ctx, one.ID, messages("one", 3))
	require.NoError(t, err)
	_, err = store.InsertBatch(ctx, two.ID, messages("two", 5))
	require.NoError(t, err)

	require.Len(t, listVisible(t, store, one.ID, 100, 3), 3)
	require.Len(t, listVisible(t, store, two.ID, 100, 5), 5)
	for _, m := range listAll(t, store, one.ID, 100) {
		require.Regexp(t, `^one-`, m.MessageID)
	}
}

// TestListMessagesWaitsForOlderTransactions checks the visibility rule: a
// row committed while an older transaction is still open is not returned
// until that transaction ends, because the older one may still commit rows
// that sort before it.
func TestListMessagesWaitsForOlderTransactions(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "older")

	conn, err := pgx.Connect(ctx, store.Pool().Config().ConnString())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	_, err = tx.Exec(ctx, `
		INSERT INTO messages (tenant_id, message_id, payload, published_at)
		VALUES ($1, 'early', '{}', now())`, tenant.ID)
	require.NoError(t, err)

	_, err = store.InsertBatch(ctx, tenant.ID, []Message{{MessageID: "late", Payload: []byte(`{}`)}})
	require.NoError(t, err)
	n, err := store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the later batch is committed")

	page, err := store.ListMessages(ctx, tenant.ID, Position{}, 10)
	require.NoError(t, err)
	require.Empty(t, page.Messages, "a row newer than an open transaction was returned")
	require.False(t, page.HasMore)
	require.Equal(t, Position{}, page.Next)

	require.NoError(t, tx.Commit(ctx))
	stored := listVisible(t, store, tenant.ID, 10, 2)
	require.Equal(t, "early", stored[0].MessageID)
	require.Equal(t, "late", stored[1].MessageID)
}

// TestListMessagesConcurrentWalk has 8 writers commit 200 batches each
// while a reader walks with limit 7 and keeps polling. Half of the writers
// sleep inside their transaction before committing, so sequence ids are
// committed out of order. The reader must see every message exactly once.
// Writers pause half-way until the reader has seen a message (at most
// 10 s), because open transactions of parallel tests can hide new rows for
// a while and the reader must overlap the writers.
func TestListMessagesConcurrentWalk(t *testing.T) {
	t.Parallel()
	store := setup(t, WithMaxConns(12))
	ctx := testContext(t)
	tenant := createTenant(t, store, "walk")

	const writers, batches = 8, 200
	want := map[string]bool{}
	plans := make([][][]Message, writers)
	for w := range writers {
		for b := range batches {
			msgs := messages(fmt.Sprintf("w%d-b%d", w, b), 1+b%4)
			plans[w] = append(plans[w], msgs)
			for _, m := range msgs {
				want[m.MessageID] = true
			}
		}
	}

	readerStarted := make(chan struct{})
	writeErrs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			half := batches / 2
			slow := w%2 == 1
			if writeErrs[w] = runWriter(ctx, store, tenant.ID, plans[w][:half], slow); writeErrs[w] != nil {
				return
			}
			select {
			case <-readerStarted:
			case <-time.After(10 * time.Second):
			}
			writeErrs[w] = runWriter(ctx, store, tenant.ID, plans[w][half:], slow)
		})
	}
	writersDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(writersDone)
	}()

	seen, seenWhileWriting := walkUntil(t, store, tenant.ID, len(want), writersDone, readerStarted)
	<-writersDone
	for w, err := range writeErrs {
		require.NoError(t, err, "writer %d", w)
	}
	require.Len(t, seen, len(want))
	for id := range want {
		require.True(t, seen[id], "message %s was never returned", id)
	}
	require.Positive(t, seenWhileWriting, "the reader never overlapped the writers")
	t.Logf("%d messages, %d of them read while writers were running", len(want), seenWhileWriting)
}

// runWriter inserts each batch of plan. A slow writer inserts in its own
// transaction and sleeps up to 2 ms before committing.
func runWriter(ctx context.Context, store *Postgres, tenantID string, plan [][]Message, slow bool) error {
	for _, msgs := range plan {
		if !slow {
			if _, err := store.InsertBatch(ctx, tenantID, msgs); err != nil {
				return err
			}
			continue
		}
		b := newBatch(msgs, make([]Result, len(msgs)))
		err := pgx.BeginFunc(ctx, store.Pool(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insertSQL, tenantID, b.ids, b.payloads, b.published); err != nil {
				return err
			}
			time.Sleep(time.Duration(mathrand.IntN(2000)) * time.Microsecond)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// walkUntil reads the tenant with limit 7, polling whenever a page has no
// more, until it has seen want messages or 40 s have passed. It closes
// started at the first message it reads, and fails on a duplicate or
// out-of-order message. It returns the ids seen and how many were read
// before writersDone closed.
func walkUntil(t *testing.T, store *Postgres, tenantID string, want int,
	writersDone <-chan struct{}, started chan<- struct{}) (map[string]bool, int) {
	t.Helper()
	ctx := testContext(t)
	seen := make(map[string]bool, want)
	seenWhileWriting := 0
	deadline := time.Now().Add(40 * time.Second)
	var after Position
	for len(seen) < want {
		require.False(t, time.Now().After(deadline), "timed out with %d of %d messages read", len(seen), want)
		writing := true
		select {
		case <-writersDone:
			writing = false
		default:
		}

		page, err := store.ListMessages(ctx, tenantID, after, 7)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Messages), 7)
		for _, m := range page.Messages {
			require.False(t, seen[m.MessageID], "message %s returned twice", m.MessageID)
			require.True(t, less(after, m.Position), "message %s returned out of order", m.MessageID)
			if len(seen) == 0 {
				close(started)
			}
			seen[m.MessageID] = true
			after = m.Position
			if writing {
				seenWhileWriting++
			}
		}
		require.Equal(t, after, page.Next)
		if !page.HasMore {
			time.Sleep(time.Millisecond)
		}
	}

	page, err := store.ListMessages(ctx, tenantID, after, 7)
	require.NoError(t, err)
	require.Empty(t, page.Messages, "messages after the last expected one")
	return seen, seenWhileWriting
}

func TestCountMessages(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "count")

	n, err := store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.Zero(t, n)
	_, err = store.InsertBatch(ctx, tenant.ID, messages("m", 12))
	require.NoError(t, err)
	n, err = store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.EqualValues(t, 12, n)
}
