package persistence

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// benchPayload is a JSON document of about 200 bytes, the size of a small
// event.
var benchPayload = []byte(`{"event":"order.created","order_id":"0b9f4c1e-8d2a-4c55-9a3e-2f1b6d7e8c90",` +
	`"customer":{"id":48213,"tier":"gold"},"items":[{"sku":"A-1001","qty":2},{"sku":"B-2002","qty":1}],` +
	`"total":129.95}`)

// BenchmarkInsertBatch measures InsertBatch of new messages, one batch per
// iteration, on one connection. msgs/s is messages stored per second.
func BenchmarkInsertBatch(b *testing.B) {
	for _, size := range []int{1, 100, 500} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			store := setup(b, WithMaxConns(1))
			tenant := createTenant(b, store, "bench")
			ctx := testContext(b)
			msgs := benchMessages(size)

			b.ReportAllocs()
			seq := 0
			for b.Loop() {
				renumber(msgs, &seq)
				results, err := store.InsertBatch(ctx, tenant.ID, msgs)
				if err != nil {
					b.Fatal(err)
				}
				if results[size-1].Outcome != Inserted {
					b.Fatalf("outcome %s, want inserted", results[size-1].Outcome)
				}
			}
			b.ReportMetric(float64(seq)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkInsertBatchTenants measures small batches of 10 tenants stored
// at once, one goroutine per tenant, as workers under moderate load send
// them: each transaction of its own, or shared (WithGroupCommit).
func BenchmarkInsertBatchTenants(b *testing.B) {
	const tenants, size = 10, 3
	for _, group := range []int{0, 2} {
		b.Run(fmt.Sprintf("group_commit=%d", group), func(b *testing.B) {
			store := setup(b, WithMaxConns(16), WithGroupCommit(group))
			ids := make([]string, tenants)
			for i := range ids {
				ids[i] = createTenant(b, store, fmt.Sprintf("bench%d", i)).ID
			}
			ctx := testContext(b)
			var goroutine, seq atomic.Int64

			b.ReportAllocs()
			b.SetParallelism(tenants / runtime.GOMAXPROCS(0))
			b.RunParallel(func(pb *testing.PB) {
				tenant := ids[int(goroutine.Add(1)-1)%tenants]
				msgs := make([]Message, size)
				for pb.Next() {
					for i := range msgs {
						msgs[i] = Message{MessageID: strconv.FormatInt(seq.Add(1), 10),
							Payload: benchPayload, PublishedAt: time.Now()}
					}
					if _, err := store.InsertBatch(ctx, tenant, msgs); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkInsertMethods compares ways of storing one batch of new
// messages on one connection, each batch its own transaction:
//
//   - insert_parent: InsertBatch, one INSERT ... ON CONFLICT DO NOTHING
//     into the partitioned table, which routes rows to the partition.
//   - insert_partition: the same statement straight into the partition.
//   - copy_partition: COPY straight into the partition. It has no ON
//     CONFLICT, so one redelivered message would fail the whole batch. It
//     is the upper bound that skipping duplicates costs against.
//   - copy_staged: COPY into a temporary table, then INSERT ... SELECT
//     ... ON CONFLICT DO NOTHING into the partition, in one transaction.
func BenchmarkInsertMethods(b *testing.B) {
	type method func(ctx context.Context, conn *pgxpool.Conn, store *Postgres, tenant Tenant, msgs []Message) (int, error)
	methods := []struct {
		name string
		run  method
	}{
		{"insert_parent", func(ctx context.Context, _ *pgxpool.Conn, store *Postgres, tenant Tenant, msgs []Message) (int, error) {
			results, err := store.InsertBatch(ctx, tenant.ID, msgs)
			return countInserted(results), err
		}},
		{"insert_partition", func(ctx context.Context, conn *pgxpool.Conn, _ *Postgres, tenant Tenant, msgs []Message) (int, error) {
			ids, payloads, published := benchColumns(msgs)
			sql := strings.Replace(insertSQL, "INSERT INTO messages ",
				"INSERT INTO "+pgx.Identifier{partitionName(tenant.ID)}.Sanitize()+" ", 1)
			rows, err := conn.Query(ctx, sql, tenant.ID, ids, payloads, published)
			if err != nil {
				return 0, err
			}
			return countRows(rows)
		}},
		{"copy_partition", func(ctx context.Context, conn *pgxpool.Conn, _ *Postgres, tenant Tenant, msgs []Message) (int, error) {
			n, err := conn.CopyFrom(ctx, pgx.Identifier{partitionName(tenant.ID)},
				[]string{"tenant_id", "message_id", "payload", "published_at"}, copyRows(tenant.ID, msgs))
			return int(n), err
		}},
		{"copy_staged", func(ctx context.Context, conn *pgxpool.Conn, _ *Postgres, tenant Tenant, msgs []Message) (int, error) {
			tx, err := conn.Begin(ctx)
			if err != nil {
				return 0, err
			}
			defer tx.Rollback(ctx)
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"bench_staged"},
				[]string{"tenant_id", "message_id", "payload", "published_at"}, copyRows(tenant.ID, msgs)); err != nil {
				return 0, err
			}
			rows, err := tx.Query(ctx, `
INSERT INTO `+pgx.Identifier{partitionName(tenant.ID)}.Sanitize()+` (tenant_id, message_id, payload, published_at)
SELECT tenant_id, message_id, payload, published_at FROM bench_staged
ON CONFLICT (tenant_id, message_id) DO NOTHING
RETURNING message_id`)
			if err != nil {
				return 0, err
			}
			n, err := countRows(rows)
			if err != nil {
				return 0, err
			}
			return n, tx.Commit(ctx)
		}},
	}

	for _, m := range methods {
		for _, size := range []int{1, 100, 500} {
			b.Run(fmt.Sprintf("%s/size=%d", m.name, size), func(b *testing.B) {
				store := setup(b, WithMaxConns(2))
				tenant := createTenant(b, store, "bench")
				ctx := testContext(b)
				conn, err := store.pool.Acquire(ctx)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Release()
				_, err = conn.Exec(ctx, `CREATE TEMPORARY TABLE bench_staged
					(tenant_id text, message_id text, payload jsonb, published_at timestamptz) ON COMMIT DELETE ROWS`)
				if err != nil {
					b.Fatal(err)
				}
				msgs := benchMessages(size)

				b.ReportAllocs()
				seq := 0
				for b.Loop() {
					renumber(msgs, &seq)
					n, err := m.run(ctx, conn, store, tenant, msgs)
					if err != nil {
						b.Fatal(err)
					}
					if n != size {
						b.Fatalf("stored %d messages, expected %d", n, size)
					}
				}
				b.ReportMetric(float64(seq)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// benchMessages returns size messages with benchPayload and no ids yet.
func benchMessages(size int) []Message {
	msgs := make([]Message, size)
	published := time.Now()
	for i := range msgs {
		msgs[i] = Message{Payload: benchPayload, PublishedAt: published}
	}
	return msgs
}

// renumber gives msgs the message ids *seq, *seq+1, ... and advances *seq.
func renumber(msgs []Message, seq *int) {
	for i := range msgs {
		msgs[i].MessageID = strconv.Itoa(*seq)
		*seq++
	}
}

func countInserted(results []Result) int {
	n := 0
	for _, r := range results {
		if r.Outcome == Inserted {
			n++
		}
	}
	return n
}

func countRows(rows pgx.Rows) (int, error) {
	n := 0
	for rows.Next() {
		n++
	}
	return n, rows.Err()
}

func benchColumns(msgs []Message) (ids []string, payloads [][]byte, published []time.Time) {
	for _, m := range msgs {
		ids = append(ids, m.MessageID)
		payloads = append(payloads, m.Payload)
		published = append(published, m.PublishedAt)
	}
	return ids, payloads, published
}

func copyRows(tenantID string, msgs []Message) pgx.CopyFromSource {
	return pgx.CopyFromSlice(len(msgs), func(i int) ([]any, error) {
		return []any{tenantID, msgs[i].MessageID, msgs[i].Payload, msgs[i].PublishedAt}, nil
	})
}
