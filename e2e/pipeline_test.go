package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

const (
	perTenant    = 10000
	viaAMQP      = 5000 // of perTenant; the rest goes over HTTP
	httpBatch    = 100
	viaCLI       = 5 // extra messages published with amqp-publish
	duplicateRun = 200
)

type tenantView struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	WorkerCount    int       `json:"worker_count"`
	WorkersRunning int       `json:"workers_running"`
	CreatedAt      time.Time `json:"created_at"`
}

type storedMessage struct {
	ID        int64  `json:"id"`
	MessageID string `json:"message_id"`
}

type page struct {
	Messages   []storedMessage `json:"messages"`
	NextCursor string          `json:"next_cursor"`
	HasMore    bool            `json:"has_more"`
}

// walk reads every message of the tenant with the cursor API and returns
// the message ids in order and the cursor after the last one.
func (e *env) walk(t *testing.T, token, cursor string, limit int) ([]string, string) {
	t.Helper()
	var ids []string
	for {
		var p page
		u := fmt.Sprintf("%s?limit=%d&cursor=%s", e.url("/api/v1/messages"), limit, url.QueryEscape(cursor))
		call(t, http.MethodGet, u, token, nil, http.StatusOK, &p)
		for _, m := range p.Messages {
			ids = append(ids, m.MessageID)
		}
		require.NotEmpty(t, p.NextCursor, "next_cursor is always set")
		cursor = p.NextCursor
		if !p.HasMore {
			return ids, cursor
		}
	}
}

// publishAMQP publishes n messages with ids prefix-0..n-1 to the tenant over
// a confirm channel, as a producer that does not use the HTTP API would.
func publishAMQP(t *testing.T, rabbitURL, tenantID, prefix string, from, n int) {
	t.Helper()
	conn, err := amqp.Dial(rabbitURL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Confirm(false))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var confirms []*amqp.DeferredConfirmation
	for i := from; i < from+n; i++ {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, transport.ExchangeName, tenantID, false, false,
			amqp.Publishing{
				DeliveryMode: amqp.Persistent,
				ContentType:  "application/json",
				MessageId:    fmt.Sprintf("%s-%d", prefix, i),
				Timestamp:    time.Now(),
				Body:         []byte(fmt.Sprintf(`{"n":%d,"via":"amqp"}`, i)),
			})
		require.NoError(t, err)
		confirms = append(confirms, c)
	}
	for _, c := range confirms {
		ok, err := c.WaitContext(ctx)
		require.NoError(t, err)
		require.True(t, ok, "broker nacked a publish")
	}
}

// publishHTTP publishes n messages in batches with ids prefix-from.. and
// requires each batch to be accepted.
func (e *env) publishHTTP(t *testing.T, token, prefix string, from, n int) {
	t.Helper()
	for start := from; start < from+n; start += httpBatch {
		end := min(start+httpBatch, from+n)
		msgs := make([]map[string]any, 0, end-start)
		for i := start; i < end; i++ {
			msgs = append(msgs, map[string]any{
				"message_id": fmt.Sprintf("%s-%d", prefix, i),
				"payload":    map[string]any{"n": i, "via": "http"},
			})
		}
		var res struct {
			Accepted   int      `json:"accepted"`
			MessageIDs []string `json:"message_ids"`
		}
		call(t, http.MethodPost, e.url("/api/v1/messages"), token, map[string]any{"messages": msgs},
			http.StatusAccepted, &res)
		require.Equal(t, end-start, res.Accepted)
		require.Len(t, res.MessageIDs, end-start)
	}
}

// publishCLI publishes with amqp-publish from Debian's amqp-tools, a client
// this project did not write.
func publishCLI(t *testing.T, rabbitURL, tenantID string, n int) {
	t.Helper()
	bin, err := exec.LookPath("amqp-publish")
	if err != nil {
		msg := "amqp-publish not found; install Debian's amqp-tools"
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// amqp-tools reads the vhost from the URL path; "/" must be left off.
	cliURL := strings.TrimSuffix(rabbitURL, "/")
	for i := 0; i < n; i++ {
		body := fmt.Sprintf(`{"n":%d,"via":"amqp-publish"}`, i)
		out, err := exec.Command(bin, "-u", cliURL, "-e", transport.ExchangeName, "-r", tenantID,
			"-p", "-C", "application/json", "-b", body).CombinedOutput()
		require.NoError(t, err, "amqp-publish: %s", out)
	}
}

func (e *env) tenant(t *testing.T, id string) tenantView {
	t.Helper()
	var v tenantView
	call(t, http.MethodGet, e.url("/api/v1/tenants/"+id), e.admin, nil, http.StatusOK, &v)
	return v
}

func (e *env) waitStored(t *testing.T, token string, want int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d stored messages", want), func() bool {
		ids, _ := e.walk(t, token, "", 1000)
		return len(ids) >= want
	})
}

// requireExactlyOnce checks that ids holds every expected id once and
// nothing else except `others` messages with ids not in expected.
func requireExactlyOnce(t *testing.T, ids []string, expected map[string]bool, others int) {
	t.Helper()
	seen := make(map[string]int, len(ids))
	for _, id := range ids {
		seen[id]++
	}
	// Plain loops: testify's Contains scans a map by reflection, which
	// takes minutes for ten thousand ids.
	var duplicated, missing []string
	for id, n := range seen {
		if n != 1 {
			duplicated = append(duplicated, id)
		}
	}
	for id := range expected {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	require.Empty(t, duplicated, "messages stored more than once")
	require.Empty(t, missing, "messages not stored")
	require.Len(t, ids, len(expected)+others)
}

func TestPipelineEndToEnd(t *testing.T) {
	e := newEnv(t)
	srv := e.start(t)

	type tenantCase struct {
		id, token string
		workers   int
		expected  map[string]bool
	}
	var tenants []*tenantCase
	for i, workers := range []int{2, 3, 4} {
		id := testenv.TenantID(fmt.Sprintf("e2e%d", i))
		var v tenantView
		call(t, http.MethodPost, e.url("/api/v1/tenants"), e.admin,
			map[string]any{"id": id, "name": "End to end " + id, "worker_count": workers}, http.StatusCreated, &v)
		require.Equal(t, id, v.ID)
		require.Equal(t, workers, v.WorkerCount)
		require.Equal(t, workers, v.WorkersRunning)
		tc := &tenantCase{id: id, workers: workers, expected: make(map[string]bool, perTenant),
			token: e.token(t, api.Claims{Role: api.RoleTenant, TenantID: id})}
		for n := 0; n < viaAMQP; n++ {
			tc.expected[fmt.Sprintf("amqp-%d", n)] = true
		}
		for n := viaAMQP; n < perTenant; n++ {
			tc.expected[fmt.Sprintf("http-%d", n)] = true
		}
		tenants = append(tenants, tc)
	}
	t.Cleanup(func() { deleteQueues(t, e.rabbitURL, tenants[0].id, tenants[1].id, tenants[2].id) })

	// Publish 10,000 messages to each tenant, half over AMQP and half over
	// HTTP, all at once, while the first tenant is resized twice.
	started := time.Now()
	var wg sync.WaitGroup
	for _, tc := range tenants {
		wg.Add(2)
		go func() { defer wg.Done(); publishAMQP(t, e.rabbitURL, tc.id, "amqp", 0, viaAMQP) }()
		go func() { defer wg.Done(); e.publishHTTP(t, tc.token, "http", viaAMQP, perTenant-viaAMQP) }()
	}
	resized := tenants[0]
	for _, n := range []int{6, 1} {
		time.Sleep(300 * time.Millisecond)
		var v tenantView
		call(t, http.MethodPut, e.url("/api/v1/tenants/"+resized.id+"/config/concurrency"), e.admin,
			map[string]any{"worker_count": n}, http.StatusOK, &v)
		require.Equal(t, n, v.WorkerCount)
		resized.workers = n
	}
	wg.Wait()
	published := time.Since(started)

	// Redeliver some messages with known ids: none may be stored twice.
	publishAMQP(t, e.rabbitURL, tenants[1].id, "amqp", 0, duplicateRun)
	publishCLI(t, e.rabbitURL, tenants[2].id, viaCLI)
	others := map[string]int{tenants[2].id: viaCLI}

	for _, tc := range tenants {
		e.waitStored(t, tc.token, perTenant+others[tc.id], 2*time.Minute)
	}
	elapsed := time.Since(started)
	total := len(tenants) * perTenant
	t.Logf("published %d messages in %s; all stored after %s (%.0f messages/s end to end)",
		total, published.Round(time.Millisecond), elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())

	t.Logf("%s: %s", time.Since(started).Round(time.Millisecond), "walk")
	// A walk with small pages returns every message exactly once, and the
	// cursor after the last page returns nothing new.
	for _, tc := range tenants {
		ids, cursor := e.walk(t, tc.token, "", 997)
		requireExactlyOnce(t, ids, tc.expected, others[tc.id])
		more, _ := e.walk(t, tc.token, cursor, 10)
		require.Empty(t, more)
	}

	t.Logf("%s: %s", time.Since(started).Round(time.Millisecond), "resize check")
	eventually(t, 30*time.Second, "resized tenant back to 1 live worker", func() bool {
		return e.tenant(t, resized.id).WorkersRunning == 1
	})
	requireMetric(t, e, fmt.Sprintf(`messaging_workers_live{tenant="%s"} 1`, resized.id))

	// Under this load the tenants' batches share insert transactions.
	text := metricsText(t, e)
	transactions := metricValue(t, text, "messaging_insert_transaction_batches_count")
	batches := metricValue(t, text, "messaging_insert_transaction_batches_sum")
	require.Positive(t, transactions)
	require.Greater(t, batches, transactions, "no insert transaction stored more than one batch")
	require.LessOrEqual(t, batches, metricValue(t, text, "messaging_batch_size_count"),
		"more batches in transactions than batches stored")

	t.Logf("%s: %s", time.Since(started).Round(time.Millisecond), "restart")
	// Restart: messages published while the server is down wait in the
	// queue and are stored once it is back.
	took := srv.Stop(t, 25*time.Second)
	t.Logf("graceful shutdown took %s", took.Round(time.Millisecond))
	publishAMQP(t, e.rabbitURL, tenants[0].id, "offline", 0, 500)
	e.start(t)
	for _, tc := range tenants {
		v := e.tenant(t, tc.id)
		require.Equal(t, tc.workers, v.WorkerCount)
		require.Equal(t, tc.workers, v.WorkersRunning)
	}
	for n := 0; n < 500; n++ {
		tenants[0].expected[fmt.Sprintf("offline-%d", n)] = true
	}
	e.waitStored(t, tenants[0].token, perTenant+500, time.Minute)
	ids, _ := e.walk(t, tenants[0].token, "", 1000)
	requireExactlyOnce(t, ids, tenants[0].expected, 0)

	t.Logf("%s: %s", time.Since(started).Round(time.Millisecond), "delete")
	// Delete: the tenant, its queues, its partition and its metrics go.
	gone := tenants[2]
	call(t, http.MethodDelete, e.url("/api/v1/tenants/"+gone.id), e.admin, nil, http.StatusNoContent, nil)
	call(t, http.MethodGet, e.url("/api/v1/tenants/"+gone.id), e.admin, nil, http.StatusNotFound, nil)
	requireQueueGone(t, e.rabbitURL, transport.QueueName(gone.id))
	requireQueueGone(t, e.rabbitURL, transport.DeadLetterQueueName(gone.id))
	requireNoPartition(t, e.databaseURL, gone.id)
	body := metricsText(t, e)
	require.NotContains(t, body, `tenant="`+gone.id+`"`)
}

func metricsText(t *testing.T, e *env) string {
	t.Helper()
	res, err := http.Get(e.url("/metrics"))
	require.NoError(t, err)
	defer res.Body.Close()
	return readAll(t, res)
}

// metricValue returns the value of the unlabelled series name in text, the
// Prometheus text format.
func metricValue(t *testing.T, text, name string) float64 {
	t.Helper()
	for line := range strings.Lines(text) {
		value, ok := strings.CutPrefix(strings.TrimSpace(line), name+" ")
		if ok {
			v, err := strconv.ParseFloat(value, 64)
			require.NoError(t, err, "series %s", name)
			return v
		}
	}
	t.Fatalf("/metrics has no series %s", name)
	return 0
}

func requireMetric(t *testing.T, e *env, line string) {
	t.Helper()
	require.Contains(t, metricsText(t, e), line)
}

func requireQueueGone(t *testing.T, rabbitURL, queue string) {
	t.Helper()
	conn, err := amqp.Dial(rabbitURL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	var amqpErr *amqp.Error
	require.ErrorAs(t, err, &amqpErr, "queue %s still exists", queue)
	require.Equal(t, amqp.NotFound, amqpErr.Code)
}

func requireNoPartition(t *testing.T, databaseURL, tenantID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := persistence.Open(ctx, databaseURL, testLogger())
	require.NoError(t, err)
	defer store.Close()
	var n int
	err = store.Pool().QueryRow(ctx, `
		SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'messages'::regclass
		  AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (%L)', $1::text)`, tenantID).Scan(&n)
	require.NoError(t, err)
	require.Zero(t, n, "partition of tenant %s still exists", tenantID)
}

// deleteQueues removes the queues a failed test may leave behind.
func deleteQueues(t *testing.T, rabbitURL string, tenantIDs ...string) {
	conn, err := amqp.Dial(rabbitURL)
	if err != nil {
		t.Logf("clean up queues: %v", err)
		return
	}
	defer conn.Close()
	for _, id := range tenantIDs {
		for _, q := range []string{transport.QueueName(id), transport.DeadLetterQueueName(id)} {
			ch, err := conn.Channel()
			if err != nil {
				return
			}
			_, _ = ch.QueueDelete(q, false, false, false)
			_ = ch.Close()
		}
	}
}
