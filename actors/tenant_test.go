package actors_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/actors"
	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

func TestTenantStoresEveryMessageOnce(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{BatchSize: 50}, nil)
	f.spawn(3)

	f.publish("m", 0, 2000)
	f.waitCount(2000, 60*time.Second)

	st := f.request(&actors.GetStatus{}).(*actors.Status)
	require.Equal(t, 3, st.WorkersRunning)
	require.True(t, st.ConsumerRunning)
	eventually(t, 10*time.Second, "persisted counter at 2000", func() bool {
		return f.counter(f.metrics.Persisted, f.tenant) == 2000
	})
	require.Equal(t, 2000.0, f.counter(f.metrics.Received, f.tenant))
	require.Zero(t, f.counter(f.metrics.Duplicates, f.tenant))

	// After a graceful stop nothing is left unacked: the queue is empty.
	f.request(&actors.Stop{})
	require.Zero(t, f.queueDepth(transport.QueueName(f.tenant)))
}

func TestTenantSkipsRedeliveredMessageIDs(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{}, nil)
	f.spawn(2)

	f.publish("dup", 0, 300)
	f.waitCount(300, 30*time.Second)
	f.publish("dup", 100, 300) // 200 known ids, 100 new
	f.waitCount(400, 30*time.Second)
	eventually(t, 10*time.Second, "200 duplicates counted", func() bool {
		return f.counter(f.metrics.Duplicates, f.tenant) == 200
	})
}

func TestTenantResizeUnderLoad(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{BatchSize: 20}, nil)
	f.spawn(3)

	const total = 6000
	var wg sync.WaitGroup
	for p := 0; p < 3; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.publish(fmt.Sprintf("p%d", p), 0, total/3)
		}()
	}
	for _, n := range []int{8, 1, 5, 2, 4} {
		st := f.request(&actors.Resize{WorkerCount: n}).(*actors.Status)
		require.Equal(t, n, st.WorkerCount)
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()

	f.waitCount(total, 60*time.Second)
	eventually(t, 20*time.Second, "4 live workers", func() bool { return f.state.WorkersRunning() == 4 })
	eventually(t, 10*time.Second, "persisted counter at total", func() bool {
		return f.counter(f.metrics.Persisted, f.tenant) == total
	})
	require.Zero(t, f.counter(f.metrics.Duplicates, f.tenant), "a resize must not redeliver settled messages")
	require.Equal(t, 4.0, gaugeValue(t, f, "messaging_workers_live"))

	f.request(&actors.Stop{})
	require.Zero(t, f.queueDepth(transport.QueueName(f.tenant)))
}

func TestWorkerCrashRequeuesBatch(t *testing.T) {
	t.Parallel()
	var crashes sync.Map
	wrap := func(s actors.Store) actors.Store {
		return &faultyStore{Store: s, fail: func(msgs []persistence.Message) error {
			for _, m := range msgs {
				if strings.Contains(string(m.Payload), "crash-once") {
					if _, done := crashes.LoadOrStore(m.MessageID, true); !done {
						panic("injected worker crash")
					}
				}
			}
			return nil
		}}
	}
	f := setup(t, actors.Options{BatchSize: 100, RestartMin: 10 * time.Millisecond}, wrap)
	f.spawn(2)

	f.publish("ok", 0, 200)
	f.publishRaw("crash-1", []byte(`{"kind":"crash-once"}`))
	f.publish("ok", 200, 200)

	f.waitCount(401, 30*time.Second)
	eventually(t, 10*time.Second, "one restart counted", func() bool {
		return f.counter(f.metrics.WorkerRestarts, f.tenant) == 1
	})
	eventually(t, 10*time.Second, "2 live workers again", func() bool { return f.state.WorkersRunning() == 2 })
	require.Empty(t, f.deadLetters(1, 500*time.Millisecond))
}

func TestWorkerDeadLettersCrashLoop(t *testing.T) {
	t.Parallel()
	wrap := func(s actors.Store) actors.Store {
		return &faultyStore{Store: s, fail: func(msgs []persistence.Message) error {
			for _, m := range msgs {
				if strings.Contains(string(m.Payload), "crash-always") {
					panic("injected worker crash")
				}
			}
			return nil
		}}
	}
	f := setup(t, actors.Options{BatchSize: 100, MaxAttempts: 3, RestartMin: 10 * time.Millisecond,
		RestartMax: 50 * time.Millisecond}, wrap)
	f.spawn(2)

	f.publish("ok", 0, 100)
	f.publishRaw("poison", []byte(`{"kind":"crash-always"}`))
	f.publish("ok", 100, 100)

	f.waitCount(200, 30*time.Second)
	dead := f.deadLetters(1, 30*time.Second)
	require.Len(t, dead, 1)
	require.Equal(t, "poison", dead[0].MessageId)
	require.Equal(t, actors.ReasonMaxAttempts, dead[0].Headers["x-death-reason"])
	require.GreaterOrEqual(t, f.counter(f.metrics.WorkerRestarts, f.tenant), 3.0)
	// The worker counts the dead letter after the broker confirmed it, so
	// the test can read it from the queue before the counter moves.
	eventually(t, 10*time.Second, "dead-lettered counter at 1", func() bool {
		return f.counter(f.metrics.DeadLettered, f.tenant, actors.ReasonMaxAttempts) == 1
	})
}

func TestWorkerDeadLettersPoisonMessages(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{BatchSize: 100, MaxPayloadBytes: 1024}, nil)
	f.spawn(1)

	f.publish("ok", 0, 50)
	f.publishRaw("bad-json", []byte(`{"unterminated": `))
	f.publishRaw("too-large", []byte(`{"pad":"`+strings.Repeat("x", 2000)+`"}`))
	f.publishRaw("nul", []byte(`{"text":"a\u0000b"}`))
	f.publish("ok", 50, 50)

	f.waitCount(100, 30*time.Second)
	dead := f.deadLetters(3, 30*time.Second)
	require.Len(t, dead, 3)
	reasons := map[string]any{}
	for _, d := range dead {
		reasons[d.MessageId] = d.Headers["x-death-reason"]
		require.NotEmpty(t, d.Headers["x-death-detail"])
	}
	require.Equal(t, actors.ReasonInvalidJSON, reasons["bad-json"])
	require.Equal(t, actors.ReasonTooLarge, reasons["too-large"])
	require.Equal(t, actors.ReasonRejected, reasons["nul"])
}

func TestWorkerRetriesTransientErrors(t *testing.T) {
	t.Parallel()
	var failures sync.Map
	wrap := func(s actors.Store) actors.Store {
		fs := &faultyStore{Store: s}
		fs.fail = func([]persistence.Message) error {
			if fs.hits.Load() < 3 {
				failures.Store(fs.hits.Load(), true)
				return &pgconn.PgError{Code: "40001", Message: "injected serialization failure"}
			}
			return nil
		}
		return fs
	}
	f := setup(t, actors.Options{RetryMin: 5 * time.Millisecond}, wrap)
	f.spawn(1)

	f.publish("r", 0, 100)
	f.waitCount(100, 30*time.Second)
	require.GreaterOrEqual(t, f.counter(f.metrics.BatchRetries, f.tenant), 3.0)
	require.Zero(t, f.counter(f.metrics.Duplicates, f.tenant))
}

func TestWorkersLogLockedPartitionOnce(t *testing.T) {
	t.Parallel()
	const retryMsg = "worker: batch insert failed, retrying"
	const recoveredMsg = "worker: batch insert succeeded after retries"
	f := setup(t, actors.Options{BatchSize: 5, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond}, nil)
	logs := testenv.NewLogRecorder(slog.LevelDebug)
	f.deps.Logger = slog.New(logs)
	release := f.lockPartition()
	f.spawn(3)
	f.publish("l", 0, 30)

	// Every worker's batch waits for the lock, gives up after the lock
	// timeout and is retried.
	var retries []testenv.LogRecord
	eventually(t, 30*time.Second, "a retry by each of the 3 workers", func() bool {
		retries = append(retries, logs.Take(retryMsg)...)
		workers := make(map[any]bool)
		for _, r := range retries {
			workers[r.Attrs["worker"]] = true
		}
		return len(workers) == 3
	})
	release()
	f.waitCount(30, 30*time.Second)

	retries = append(retries, logs.Take(retryMsg)...)
	warnings := 0
	for _, r := range retries {
		if r.Level == slog.LevelWarn {
			warnings++
		}
	}
	require.Equal(t, 1, warnings, "one warning for the lock, not one per worker, among %d retries", len(retries))
	recovered := logs.Take(recoveredMsg)
	require.NotEmpty(t, recovered, "the end of the retries is logged")
	require.Equal(t, "INFO", recovered[0].Level.String(), "the first commit after the retries")
	require.GreaterOrEqual(t, recovered[0].Attrs["tenant_retries"], int64(3))
	for _, r := range recovered[1:] {
		require.Equal(t, "DEBUG", r.Level.String(), "the other workers' commits after retries")
	}
}

func TestTenantStopKeepsUnstoredMessagesQueued(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{BatchSize: 10}, nil)
	f.publish("s", 0, 3000)
	f.spawn(2)

	time.Sleep(50 * time.Millisecond)
	f.request(&actors.Stop{})
	stored := f.count()
	queued := f.queueDepth(transport.QueueName(f.tenant))
	require.Equal(t, int64(3000), stored+int64(queued), "stored %d, queued %d", stored, queued)
}

func TestTenantStopAbandonsBlockedInsert(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{BatchSize: 5, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond}, nil)
	logs := testenv.NewLogRecorder(slog.LevelDebug)
	f.deps.Logger = slog.New(logs)
	release := f.lockPartition()
	f.spawn(1)
	f.publish("b", 0, 5)
	eventually(t, 30*time.Second, "a retried batch insert", func() bool {
		return len(logs.Take("worker: batch insert failed, retrying")) > 0
	})

	// The worker is inside its retries while the actor stops. Without the
	// tenant's own context it would go on retrying, hold up the stop and
	// store the batch once the lock ends, after the tenant had stopped.
	f.system.Root.Stop(f.pid)
	eventually(t, 5*time.Second, "the tenant actor to stop while the lock is held", func() bool {
		return f.state.WorkersRunning() == 0 && !f.state.ConsumerRunning()
	})
	require.NotEmpty(t, logs.Take("worker: batch abandoned because the tenant is stopping; the broker will redeliver it"))

	release()
	time.Sleep(time.Second) // ten times RetryMax: a live retry loop would have stored the batch
	require.Zero(t, f.count(), "nothing stored after the tenant stopped")
	require.Equal(t, 5, f.queueDepth(transport.QueueName(f.tenant)), "the batch is back in the queue")
}

func TestTenantStopsWithoutGracefulStop(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{BatchSize: 5}, nil)
	f.spawn(2)
	eventually(t, 10*time.Second, "2 workers and the consumer", func() bool {
		return f.state.WorkersRunning() == 2 && f.state.ConsumerRunning()
	})

	// Stopping the actor without a Stop request first, as its supervisor
	// does after a graceful stop timed out, ends its workers. They must not
	// be taken for failed workers and replaced.
	f.system.Root.Stop(f.pid)
	eventually(t, 5*time.Second, "the tenant actor to stop", func() bool {
		return f.state.WorkersRunning() == 0 && !f.state.ConsumerRunning()
	})
	_, err := f.system.Root.RequestFuture(f.pid, &actors.GetStatus{}, time.Second).Result()
	require.Error(t, err, "a stopped actor does not respond")
}

func gaugeValue(t *testing.T, f *fixture, name string) float64 {
	t.Helper()
	families, err := f.reg.Gather()
	require.NoError(t, err)
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == f.tenant {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s series for tenant %s", name, f.tenant)
	return 0
}

func TestWorkerRedeclaresMissingDeadLetterQueue(t *testing.T) {
	t.Parallel()
	f := setup(t, actors.Options{}, nil)
	f.spawn(1)
	f.deleteQueue(transport.DeadLetterQueueName(f.tenant))

	f.publish("ok", 0, 20)
	f.publishRaw("bad", []byte("not json"))
	f.waitCount(20, 30*time.Second)
	dead := f.deadLetters(1, 30*time.Second)
	require.Len(t, dead, 1)
	require.Equal(t, "bad", dead[0].MessageId)
	require.Equal(t, 21.0, f.counter(f.metrics.Received, f.tenant), "the poison message is not redelivered")
}

func TestTenantHoldsAtMostPrefetch(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		opts    actors.Options
		workers int
		want    int
	}{
		"configured":               {opts: actors.Options{Prefetch: 7}, workers: 2, want: 7},
		"two batches each":         {opts: actors.Options{BatchSize: 10}, workers: 2, want: 40},
		"configured, four workers": {opts: actors.Options{Prefetch: 7, BatchSize: 10}, workers: 4, want: 7},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// Every insert waits at the gate, so the tenant keeps what it
			// received unacked and the rest stays ready in the queue.
			gate := make(chan struct{})
			var open sync.Once
			f := setup(t, tc.opts, func(s actors.Store) actors.Store {
				return &faultyStore{Store: s, fail: func([]persistence.Message) error {
					<-gate
					return nil
				}}
			})
			t.Cleanup(func() { open.Do(func() { close(gate) }) })
			f.spawn(tc.workers)

			const total = 100
			f.publish("pf", 0, total)
			queue := transport.QueueName(f.tenant)
			eventually(t, 20*time.Second, fmt.Sprintf("%d messages ready", total-tc.want), func() bool {
				return f.queueDepth(queue) == total-tc.want
			})
			time.Sleep(300 * time.Millisecond)
			require.Equal(t, total-tc.want, f.queueDepth(queue), "the tenant took more than its prefetch")

			open.Do(func() { close(gate) })
			f.waitCount(total, 30*time.Second)
		})
	}
}
