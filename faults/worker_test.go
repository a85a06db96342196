//go:build faults

package faults

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// maxAttempts is how many failed tries the server allows a message before
// it dead-letters it as max_attempts (actors.Options.MaxAttempts, default
// 5). The copy in the dead-letter queue counts one delivery more.
const maxAttempts = 5

// injectFaultTrigger installs a row trigger on the partition that fails
// every insert of a payload with the key "crash" with internal_error
// (SQLSTATE XX000), which no retry fixes, and fails the first three
// inserts of a payload with the key "flaky" with serialization_failure
// (40001), which a retry fixes. The sequence that counts the flaky
// failures is not rolled back with the failed transactions.
func injectFaultTrigger(t *testing.T, databaseURL, partition string) {
	t.Helper()
	table := pgx.Identifier{partition}.Sanitize()
	psql(t, databaseURL, `
CREATE SEQUENCE fault_flaky;
CREATE FUNCTION fault_inject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.payload ? 'crash' THEN
    RAISE EXCEPTION 'injected fault for message %', NEW.message_id USING ERRCODE = 'XX000';
  END IF;
  IF NEW.payload ? 'flaky' AND nextval('fault_flaky') <= 3 THEN
    RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER fault_inject BEFORE INSERT ON `+table+` FOR EACH ROW EXECUTE FUNCTION fault_inject();
`)
}

// A batch that fails for good inside a worker is handled like a crash: the
// worker requeues its in-flight messages and counts a failed try for each,
// and a message that keeps failing is retried alone and finally
// dead-lettered. A database trigger causes that failure on chosen messages.
// TestWorkerPanicUnderLoad crashes workers for real.
func TestWorkerBatchFailureRequeuesAndIsolates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := e.start(t)
	id := e.createTenant(t, "workerfail", 2)
	injectFaultTrigger(t, e.databaseURL, partitionName(t, e.databaseURL, id))

	const total = 4000
	crashAt := map[int]bool{500: true, 1700: true, 3100: true}
	flakyAt := 2500
	p := newAMQPProducer(e.rabbitURL, id, id, total, 1000)
	p.body = func(i int) []byte {
		switch {
		case crashAt[i]:
			return fmt.Appendf(nil, `{"n":%d,"crash":true}`, i)
		case i == flakyAt:
			return fmt.Appendf(nil, `{"n":%d,"flaky":true}`, i)
		}
		return fmt.Appendf(nil, `{"n":%d}`, i)
	}
	require.NoError(t, p.start(t)())
	waitDrained(t, id)

	// Every message but the crashing ones is stored once, including those
	// that shared a failed batch with a crashing one.
	confirmed := p.confirmed.snapshot()
	require.Len(t, confirmed, total)
	expected := make(map[string]bool, total)
	for mid := range confirmed {
		expected[mid] = true
	}
	for i := range crashAt {
		delete(expected, p.id(i))
	}
	rows := requireExactlyOnce(t, e.databaseURL, id, expected)
	require.Equal(t, total-len(crashAt), rows.total)

	// The crashing messages are dead-lettered after maxAttempts failed
	// tries, and nothing else is.
	got := make(map[string]deadLetter)
	for _, dl := range deadLetters(t, e.rabbitURL, id) {
		got[dl.messageID] = dl
	}
	require.Len(t, got, len(crashAt), "dead-lettered: %v", got)
	for i := range crashAt {
		dl, ok := got[p.id(i)]
		require.True(t, ok, "message %s not dead-lettered", p.id(i))
		require.Equal(t, "max_attempts", dl.reason)
		require.Equal(t, int32(maxAttempts+1), dl.attempts)
	}

	m := e.metrics(t)
	retries := m[fmt.Sprintf(`%s{tenant=%q}`, batchRetriesMetric, id)]
	// Each try of the flaky batch can fail twice, in a shared transaction
	// and then alone, so its three failures take one or two retries.
	require.GreaterOrEqual(t, retries, 1.0, "the flaky message's batch was not retried")
	srv.RequireRunning(t)
	status, body := e.ready()
	require.Equal(t, http.StatusOK, status, body)
	requeued := strings.Count(e.output.String(), "batch insert failed; requeueing its messages")
	t.Logf("%d rows; %d dead-lettered as max_attempts; %d batches requeued; %d batch retries",
		rows.total, len(got), requeued, int(retries))

	// After the faults, the trigger stays in place but lets good messages
	// through: a later load is stored as usual.
	after := newAMQPProducer(e.rabbitURL, id, id+"-after", 500, 1000)
	require.NoError(t, after.start(t)())
	waitDrained(t, id)
	requireExactlyOnce(t, e.databaseURL, id, union(expected, after.confirmed.snapshot()))
}
