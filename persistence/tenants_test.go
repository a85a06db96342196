package persistence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

// partitionBound returns the partition bound of the tenant's partition,
// such as FOR VALUES IN ('acme'), or "" when the partition does not exist
// or is not attached to messages.
func partitionBound(t *testing.T, store *Postgres, tenantID string) string {
	t.Helper()
	var bound string
	err := store.Pool().QueryRow(testContext(t), `
		SELECT pg_get_expr(c.relpartbound, c.oid)
		FROM pg_class c
		JOIN pg_inherits i ON i.inhrelid = c.oid
		WHERE i.inhparent = 'messages'::regclass AND c.relname = $1`,
		partitionName(tenantID)).Scan(&bound)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	require.NoError(t, err)
	return bound
}

func TestCreateTenantStoresRowAndPartition(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	id := testenv.TenantID("create")

	before := time.Now()
	created, err := store.CreateTenant(ctx, Tenant{ID: id, Name: "Tenant One", WorkerCount: 3})
	require.NoError(t, err)
	require.Equal(t, id, created.ID)
	require.Equal(t, "Tenant One", created.Name)
	require.Equal(t, 3, created.WorkerCount)
	require.WithinDuration(t, before, created.CreatedAt, 5*time.Second)

	got, err := store.GetTenant(ctx, id)
	require.NoError(t, err)
	require.Equal(t, created.ID, got.ID)
	require.Equal(t, created.Name, got.Name)
	require.Equal(t, created.WorkerCount, got.WorkerCount)
	require.True(t, created.CreatedAt.Equal(got.CreatedAt))

	require.Equal(t, "FOR VALUES IN ('"+id+"')", partitionBound(t, store, id))
}

func TestCreateTenantExistingID(t *testing.T) {
	t.Parallel()
	store := setup(t)
	tenant := createTenant(t, store, "exists")

	_, err := store.CreateTenant(testContext(t), Tenant{ID: tenant.ID, Name: "again", WorkerCount: 1})
	require.ErrorIs(t, err, ErrTenantExists)

	got, err := store.GetTenant(testContext(t), tenant.ID)
	require.NoError(t, err)
	require.Equal(t, tenant.Name, got.Name, "the failed create changed the tenant")
}

func TestCreateTenantConcurrentSameID(t *testing.T) {
	t.Parallel()
	store := setup(t, WithMaxConns(8))
	ctx := testContext(t)
	id := testenv.TenantID("race")

	const creators = 6
	errs := make([]error, creators)
	var wg sync.WaitGroup
	for i := range creators {
		wg.Go(func() {
			_, errs[i] = store.CreateTenant(ctx, Tenant{ID: id, Name: "race", WorkerCount: 1})
		})
	}
	wg.Wait()

	succeeded := 0
	for _, err := range errs {
		if err == nil {
			succeeded++
			continue
		}
		require.ErrorIs(t, err, ErrTenantExists)
	}
	require.Equal(t, 1, succeeded)
	require.NotEmpty(t, partitionBound(t, store, id))
}

func TestCreateTenantInvalidID(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)

	ids := []string{
		"",
		"A",
		"Acme",
		"-acme",
		"_acme",
		"acme corp",
		"acme.corp",
		"acme'corp",
		`acme"corp`,
		`acme\corp`,
		"acme');drop table tenants;--",
		"acme\x00",
		"acmé",
		"acme\n",
		strings.Repeat("a", MaxTenantIDLength+1),
	}
	for _, id := range ids {
		_, err := store.CreateTenant(ctx, Tenant{ID: id, Name: "bad", WorkerCount: 1})
		require.ErrorIs(t, err, ErrInvalidTenantID, "id %q", id)
	}

	tenants, err := store.ListTenants(ctx)
	require.NoError(t, err)
	require.Empty(t, tenants)
}

func TestCreateTenantInvalidWorkerCount(t *testing.T) {
	t.Parallel()
	store := setup(t)
	for _, n := range []int{0, -1} {
		_, err := store.CreateTenant(testContext(t), Tenant{ID: testenv.TenantID("workers"), Name: "w", WorkerCount: n})
		require.ErrorIs(t, err, ErrInvalidWorkerCount, "worker count %d", n)
	}
}

func TestCreateTenantRejectsNulInName(t *testing.T) {
	t.Parallel()
	store := setup(t)
	id := testenv.TenantID("nul")
	_, err := store.CreateTenant(testContext(t), Tenant{ID: id, Name: "a\x00b", WorkerCount: 1})
	require.Error(t, err)

	_, err = store.GetTenant(testContext(t), id)
	require.ErrorIs(t, err, ErrTenantNotFound, "the failed create left a tenant row")
	require.Empty(t, partitionBound(t, store, id), "the failed create left a partition")
}

// TestTenantLongAndUnusualIDs checks that ids of every shape get a working
// partition of their own. The ids include the longest ones, ids with '-'
// and '_', and ids just around the length where partition names switch to
// a hash. Three long ids differ only after the part kept in the name.
func TestTenantLongAndUnusualIDs(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)

	prefix60 := strings.Repeat("p", 60)
	ids := []string{
		"0",
		"a-b_c",
		"a--__--b",
		strings.Repeat("z", 54),
		strings.Repeat("z", 55),
		strings.Repeat("x", MaxTenantIDLength),
		"a" + strings.Repeat("-", 31) + strings.Repeat("_", 31),
		prefix60 + "aaa",
		prefix60 + "aab",
		prefix60 + "-_-",
	}
	names := map[string]string{}
	for _, id := range ids {
		require.True(t, ValidTenantID(id), "id %q", id)
		_, err := store.CreateTenant(ctx, Tenant{ID: id, Name: id, WorkerCount: 1})
		require.NoError(t, err, "id %q", id)

		name := partitionName(id)
		require.LessOrEqual(t, len(name), 63, "partition name of %q", id)
		require.NotContains(t, names, name, "ids %q and %q share a partition name", id, names[name])
		names[name] = id
		require.Equal(t, "FOR VALUES IN ('"+id+"')", partitionBound(t, store, id))

		results, err := store.InsertBatch(ctx, id, messages(id, 2))
		require.NoError(t, err, "id %q", id)
		require.Equal(t, repeat(Inserted, 2), outcomes(results), "id %q", id)
	}

	for _, id := range ids {
		stored := listVisible(t, store, id, 100, 2)
		require.Len(t, stored, 2, "id %q", id)
		for _, m := range stored {
			require.True(t, strings.HasPrefix(m.MessageID, id+"-"), "tenant %q got message %q", id, m.MessageID)
		}
	}

	for _, id := range ids {
		require.NoError(t, store.DeleteTenant(ctx, id), "id %q", id)
		require.Empty(t, partitionBound(t, store, id), "id %q", id)
	}
}

func TestPartitionName(t *testing.T) {
	t.Parallel()
	short := strings.Repeat("a", 54)
	require.Equal(t, "messages_"+short, partitionName(short))

	long := strings.Repeat("a", 55)
	name := partitionName(long)
	require.Len(t, name, 63)
	require.True(t, strings.HasPrefix(name, "messages_"+strings.Repeat("a", 37)+"$"), name)
	require.Equal(t, name, partitionName(long), "the name is not deterministic")

	prefix := strings.Repeat("q", 60)
	require.NotEqual(t, partitionName(prefix+"abc"), partitionName(prefix+"abd"))
}

func TestQuoteLiteral(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)

	inputs := []string{
		"acme",
		"it's",
		"''",
		`back\slash`,
		`\'`,
		`\\'; SELECT 1; --`,
		"'); DROP TABLE tenants; --",
		"$$dollar$$",
		"line\nbreak",
		"ünïcødé",
		"nul\x00byte",
	}
	for _, conforming := range []string{"on", "off"} {
		// A connection of its own, so that the changed setting never
		// reaches the pool.
		conn, err := pgx.Connect(ctx, store.Pool().Config().ConnString())
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		_, err = conn.Exec(ctx, "SET standard_conforming_strings = "+conforming)
		require.NoError(t, err)

		for _, in := range inputs {
			var out string
			err := conn.QueryRow(ctx, "SELECT "+quoteLiteral(in)).Scan(&out)
			require.NoError(t, err, "input %q, standard_conforming_strings %s", in, conforming)
			require.Equal(t, strings.ReplaceAll(in, "\x00", ""), out,
				"input %q, standard_conforming_strings %s", in, conforming)
		}
	}
}

func TestValidTenantID(t *testing.T) {
	t.Parallel()
	valid := []string{"a", "0", "a-", "a_", "tenant-1", strings.Repeat("9", 63)}
	for _, id := range valid {
		require.True(t, ValidTenantID(id), "id %q", id)
	}
	invalid := []string{"", "-", "_", "-a", "A", "a.b", "a/b", "a b", "ä", strings.Repeat("9", 64)}
	for _, id := range invalid {
		require.False(t, ValidTenantID(id), "id %q", id)
	}
}

func TestGetTenantNotFound(t *testing.T) {
	t.Parallel()
	store := setup(t)
	for _, id := range []string{"missing", "", "Bad ID", strings.Repeat("x", 200)} {
		_, err := store.GetTenant(testContext(t), id)
		require.ErrorIs(t, err, ErrTenantNotFound, "id %q", id)
	}
}

func TestListTenantsOrder(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)

	var want []string
	for _, prefix := range []string{"zeta", "alpha", "mu"} {
		want = append(want, createTenant(t, store, prefix).ID)
	}
	tenants, err := store.ListTenants(ctx)
	require.NoError(t, err)
	got := make([]string, len(tenants))
	for i, tenant := range tenants {
		got[i] = tenant.ID
	}
	require.Equal(t, want, got, "tenants are not in creation order")
}

func TestSetWorkerCount(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "resize")

	updated, err := store.SetWorkerCount(ctx, tenant.ID, 7)
	require.NoError(t, err)
	require.Equal(t, 7, updated.WorkerCount)
	require.Equal(t, tenant.Name, updated.Name)
	require.True(t, tenant.CreatedAt.Equal(updated.CreatedAt))

	got, err := store.GetTenant(ctx, tenant.ID)
	require.NoError(t, err)
	require.Equal(t, 7, got.WorkerCount)

	_, err = store.SetWorkerCount(ctx, tenant.ID, 0)
	require.ErrorIs(t, err, ErrInvalidWorkerCount)
	_, err = store.SetWorkerCount(ctx, "missing", 2)
	require.ErrorIs(t, err, ErrTenantNotFound)
}

func TestDeleteTenantDropsMessages(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "delete")
	other := createTenant(t, store, "keep")
	_, err := store.InsertBatch(ctx, tenant.ID, messages("gone", 3))
	require.NoError(t, err)
	_, err = store.InsertBatch(ctx, other.ID, messages("kept", 2))
	require.NoError(t, err)

	require.NoError(t, store.DeleteTenant(ctx, tenant.ID))
	_, err = store.GetTenant(ctx, tenant.ID)
	require.ErrorIs(t, err, ErrTenantNotFound)
	require.Empty(t, partitionBound(t, store, tenant.ID))
	require.ErrorIs(t, store.DeleteTenant(ctx, tenant.ID), ErrTenantNotFound)

	_, err = store.InsertBatch(ctx, tenant.ID, messages("late", 1))
	require.ErrorIs(t, err, ErrTenantNotFound)
	require.False(t, IsRetryable(err))

	n, err := store.CountMessages(ctx, other.ID)
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "deleting one tenant touched another")

	_, err = store.CreateTenant(ctx, Tenant{ID: tenant.ID, Name: "again", WorkerCount: 1})
	require.NoError(t, err)
	n, err = store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.Zero(t, n, "a re-created tenant sees old messages")
}

func TestDeleteTenantConcurrently(t *testing.T) {
	t.Parallel()
	store := setup(t, WithMaxConns(8))
	ctx := testContext(t)
	tenant := createTenant(t, store, "deleterace")

	const deleters = 4
	errs := make([]error, deleters)
	var wg sync.WaitGroup
	for i := range deleters {
		wg.Go(func() { errs[i] = store.DeleteTenant(ctx, tenant.ID) })
	}
	wg.Wait()

	succeeded := 0
	for _, err := range errs {
		if err == nil {
			succeeded++
			continue
		}
		require.ErrorIs(t, err, ErrTenantNotFound)
	}
	require.Equal(t, 1, succeeded)
	require.Empty(t, partitionBound(t, store, tenant.ID))
}

// TestDeleteTenantWithBeforeCommit checks that DeleteTenantWith
// calls its step only once the delete can no longer fail on a lock, and
// that an error of the step leaves the tenant as it was.
func TestDeleteTenantWithBeforeCommit(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "deletewith")
	_, err := store.InsertBatch(ctx, tenant.ID, messages("kept", 3))
	require.NoError(t, err)

	calls := 0
	release := holdPartitionLock(t, store, tenant.ID)
	err = store.DeleteTenantWith(ctx, tenant.ID, func(context.Context) error { calls++; return nil })
	require.True(t, IsRetryable(err), "error: %v", err)
	require.Zero(t, calls, "the step ran although the partition lock timed out")
	release()

	errStep := errors.New("step failed")
	err = store.DeleteTenantWith(ctx, tenant.ID, func(context.Context) error {
		calls++
		// The row is deleted inside the transaction only: other sessions
		// still see it.
		_, err := store.GetTenant(ctx, tenant.ID)
		require.NoError(t, err)
		return errStep
	})
	require.ErrorIs(t, err, errStep)
	require.Equal(t, 1, calls)
	_, err = store.GetTenant(ctx, tenant.ID)
	require.NoError(t, err, "a failed step removed the tenant row")
	require.NotEmpty(t, partitionBound(t, store, tenant.ID), "a failed step dropped the partition")
	n, err := store.CountMessages(ctx, tenant.ID)
	require.NoError(t, err)
	require.EqualValues(t, 3, n)

	require.NoError(t, store.DeleteTenantWith(ctx, tenant.ID, func(context.Context) error { calls++; return nil }))
	require.Equal(t, 2, calls)
	_, err = store.GetTenant(ctx, tenant.ID)
	require.ErrorIs(t, err, ErrTenantNotFound)
	require.Empty(t, partitionBound(t, store, tenant.ID))
	err = store.DeleteTenantWith(ctx, tenant.ID, func(context.Context) error { calls++; return nil })
	require.ErrorIs(t, err, ErrTenantNotFound)
	require.Equal(t, 2, calls, "the step ran for a tenant that was already gone")
}

// TestCreateTenantWhileOthersWrite checks that creating a tenant does not
// wait for transactions that write or read other tenants' messages.
func TestCreateTenantWhileOthersWrite(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	busy := createTenant(t, store, "busy")

	tx, err := store.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	_, err = tx.Exec(ctx, `
		INSERT INTO messages (tenant_id, message_id, payload, published_at)
		VALUES ($1, 'open', '{}', now())`, busy.ID)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT count(*) FROM messages`)
	require.NoError(t, err)

	createCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = store.CreateTenant(createCtx, Tenant{ID: testenv.TenantID("new"), Name: "new", WorkerCount: 1})
	require.NoError(t, err, "creating a tenant waited for an open transaction on messages")
}

// TestDeleteTenantLockTimeout checks that DeleteTenant gives up, with a
// retryable error and nothing changed, when a transaction holds messages.
func TestDeleteTenantLockTimeout(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	tenant := createTenant(t, store, "locked")

	tx, err := store.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	_, err = tx.Exec(ctx, `SELECT count(*) FROM messages WHERE tenant_id = $1`, tenant.ID)
	require.NoError(t, err)

	err = store.DeleteTenant(ctx, tenant.ID)
	require.Error(t, err)
	require.True(t, IsRetryable(err), "error: %v", err)
	require.NoError(t, tx.Rollback(ctx))

	_, err = store.GetTenant(ctx, tenant.ID)
	require.NoError(t, err, "the failed delete removed the tenant row")
	require.NoError(t, store.DeleteTenant(ctx, tenant.ID))
}

func TestDeleteTenantWaitsForItsPartitionAlone(t *testing.T) {
	t.Parallel()
	store := setup(t, WithMaxConns(4))
	victim := createTenant(t, store, "victim")
	other := createTenant(t, store, "other")
	release := holdPartitionLock(t, store, victim.ID)
	ctx := testContext(t)

	deleted := make(chan error, 1)
	go func() { deleted <- store.DeleteTenant(ctx, victim.ID) }()
	waitForLockWait(t, store, "%LOCK TABLE%")

	// While the delete waits for the victim's partition, messages is not
	// locked, so another tenant stores as usual.
	results, err := store.InsertBatch(ctx, other.ID, messages("m", 3))
	require.NoError(t, err, "an insert of another tenant during the delete")
	require.Equal(t, repeat(Inserted, 3), outcomes(results))

	release()
	select {
	case err := <-deleted:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("DeleteTenant did not return within 15s of the lock's release")
	}
	_, err = store.GetTenant(ctx, victim.ID)
	require.ErrorIs(t, err, ErrTenantNotFound)
}

// waitForLockWait waits until a session of the store's database waits
// for a lock while running a query that matches the LIKE pattern.
func waitForLockWait(t *testing.T, store *Postgres, pattern string) {
	t.Helper()
	ctx := testContext(t)
	waitFor(t, 10*time.Second, "a query like "+pattern+" to wait for a lock", func() bool {
		var waiting bool
		err := store.Pool().QueryRow(ctx, `
			SELECT count(*) > 0 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
			pattern).Scan(&waiting)
		return err == nil && waiting
	})
}

// TestDeleteTenantLockWaitSparesInserts checks that a DeleteTenant
// waiting for its lock on messages, behind a transaction that read
// messages, holds up the inserts of other tenants only briefly. While its
// lock request waits, every later query on messages queues behind it.
func TestDeleteTenantLockWaitSparesInserts(t *testing.T) {
	t.Parallel()
	const (
		insertFor = 2 * time.Second
		// maxStall is far above the wait of one lock attempt, and far below
		// the ddlLockTimeout that one long wait would reach.
		maxStall = 500 * time.Millisecond
	)
	for _, tc := range []struct {
		name string
		// readerEndsAfter is how long the reading transaction stays open
		// once the delete waits, or 0 to keep it open past the delete.
		readerEndsAfter time.Duration
	}{
		{name: "reader outlasts the delete"},
		{name: "reader ends during the delete", readerEndsAfter: 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			store := setup(t)
			ctx := testContext(t)
			victim := createTenant(t, store, "victim")
			busy := createTenant(t, store, "busy")
			endReader := holdInTransaction(t, store,
				`SELECT count(*) FROM messages WHERE tenant_id = $1`, busy.ID)

			start := time.Now()
			deleted := make(chan error, 1)
			go func() { deleted <- store.DeleteTenant(ctx, victim.ID) }()
			waitForLockWait(t, store, "%LOCK TABLE ONLY messages%")
			if tc.readerEndsAfter > 0 {
				timer := time.AfterFunc(tc.readerEndsAfter, endReader)
				t.Cleanup(func() { timer.Stop() })
			}

			inserted := 0
			var slowest time.Duration
			for i := 0; time.Since(start) < insertFor; i++ {
				began := time.Now()
				_, err := store.InsertBatch(ctx, busy.ID, messages(fmt.Sprintf("b%d", i), 2))
				elapsed := time.Since(began)
				require.NoError(t, err)
				require.Lessf(t, elapsed, maxStall,
					"insert %d of another tenant, %s after the delete began", i, began.Sub(start))
				inserted += 2
				slowest = max(slowest, elapsed)
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("%d inserts of another tenant, the slowest took %s", inserted/2, slowest)
			n, err := store.CountMessages(ctx, busy.ID)
			require.NoError(t, err)
			require.EqualValues(t, inserted, n)

			var deleteErr error
			select {
			case deleteErr = <-deleted:
			case <-time.After(ddlLockTimeout + 5*time.Second):
				t.Fatalf("DeleteTenant did not return within %s", ddlLockTimeout+5*time.Second)
			}
			took := time.Since(start)

			if tc.readerEndsAfter == 0 {
				require.True(t, IsRetryable(deleteErr), "error: %v", deleteErr)
				require.GreaterOrEqual(t, took, ddlLockTimeout-100*time.Millisecond,
					"the delete gave up before its lock timeout")
				require.Less(t, took, ddlLockTimeout+time.Second, "the delete went on past its lock timeout")
				endReader()
				_, err := store.GetTenant(ctx, victim.ID)
				require.NoError(t, err, "the failed delete removed the tenant row")
				require.NotEmpty(t, partitionBound(t, store, victim.ID), "the failed delete dropped the partition")
				require.NoError(t, store.DeleteTenant(ctx, victim.ID))
			} else {
				require.NoError(t, deleteErr)
				require.Less(t, took, ddlLockTimeout, "the delete did not take the lock once the reader ended")
			}
			_, err = store.GetTenant(ctx, victim.ID)
			require.ErrorIs(t, err, ErrTenantNotFound)
			require.Empty(t, partitionBound(t, store, victim.ID))
		})
	}
}
