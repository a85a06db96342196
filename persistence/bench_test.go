package persistence

import (
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
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
			msgs := make([]Message, size)
			published := time.Now()
			for i := range msgs {
				msgs[i] = Message{Payload: benchPayload, PublishedAt: published}
			}

			b.ReportAllocs()
			seq := 0
			for b.Loop() {
				for i := range msgs {
					msgs[i].MessageID = strconv.Itoa(seq)
					seq++
				}
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
