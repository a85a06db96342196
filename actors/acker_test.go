package actors

import (
	"math/rand/v2"
	"sync"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// recordingChannel records the acks and nacks it receives and fails the
// test on any frame a broker would reject.
type recordingChannel struct {
	mu      sync.Mutex
	t       *testing.T
	settled map[uint64]string
	acks    []uint64
}

func (r *recordingChannel) Ack(tag uint64, multiple bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	require.True(r.t, multiple)
	if n := len(r.acks); n > 0 {
		require.Greater(r.t, tag, r.acks[n-1], "a multiple ack must not go backwards")
	}
	for t := uint64(1); t <= tag; t++ {
		if _, ok := r.settled[t]; !ok {
			r.settled[t] = "ack"
		}
	}
	r.acks = append(r.acks, tag)
	return nil
}

func (r *recordingChannel) Nack(tag uint64, multiple, requeue bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	require.False(r.t, multiple)
	require.True(r.t, requeue)
	_, done := r.settled[tag]
	require.False(r.t, done, "tag %d nacked after it was settled", tag)
	r.settled[tag] = "nack"
	return nil
}

func (r *recordingChannel) Reject(uint64, bool) error {
	r.t.Fatal("reject is never used")
	return nil
}

func deliveries(ch amqp.Acknowledger, n int) []*amqp.Delivery {
	out := make([]*amqp.Delivery, n)
	for i := range out {
		out[i] = &amqp.Delivery{Acknowledger: ch, DeliveryTag: uint64(i + 1)}
	}
	return out
}

func TestAckerWaitsForContiguousRun(t *testing.T) {
	t.Parallel()
	ch := &recordingChannel{t: t, settled: map[uint64]string{}}
	a := newAcker()
	ds := deliveries(ch, 5)

	require.NoError(t, a.ack(ds[1]))
	require.NoError(t, a.ack(ds[2]))
	require.Empty(t, ch.acks, "tag 1 is still outstanding")
	require.NoError(t, a.nack(ds[3]))
	require.NoError(t, a.ack(ds[0]))
	require.Equal(t, []uint64{3}, ch.acks, "one ack covers 1..3; 4 was nacked")
	require.NoError(t, a.ack(ds[4]))
	require.Equal(t, []uint64{3, 5}, ch.acks)
	require.Equal(t, "nack", ch.settled[4])
}

func TestAckerNackOnlyRunSendsNoAck(t *testing.T) {
	t.Parallel()
	ch := &recordingChannel{t: t, settled: map[uint64]string{}}
	a := newAcker()
	ds := deliveries(ch, 2)
	require.NoError(t, a.nack(ds[0]))
	require.NoError(t, a.nack(ds[1]))
	require.Empty(t, ch.acks)
}

func TestAckerConcurrentWorkers(t *testing.T) {
	t.Parallel()
	ch := &recordingChannel{t: t, settled: map[uint64]string{}}
	a := newAcker()
	const n = 5000
	ds := deliveries(ch, n)
	rand.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })

	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if ds[i].DeliveryTag%97 == 0 {
					require.NoError(t, a.nack(ds[i]))
				} else {
					require.NoError(t, a.ack(ds[i]))
				}
			}
		}()
	}
	wg.Wait()

	require.Len(t, ch.settled, n, "every delivery is settled exactly once")
	require.Equal(t, uint64(n), ch.acks[len(ch.acks)-1])
	for tag, how := range ch.settled {
		want := "ack"
		if tag%97 == 0 {
			want = "nack"
		}
		require.Equal(t, want, how, "tag %d", tag)
	}
}

func TestAckerBatchInOrderSendsOneAck(t *testing.T) {
	t.Parallel()
	ch := &recordingChannel{t: t, settled: map[uint64]string{}}
	a := newAcker()
	ds := deliveries(ch, 6)

	require.NoError(t, a.ack(ds[3:]...))
	require.Empty(t, ch.acks, "tags 1 to 3 are still outstanding")
	require.NoError(t, a.ack(ds[:3]...))
	require.Equal(t, []uint64{6}, ch.acks, "one frame acks the whole run")
	require.NoError(t, a.ack())
	require.Equal(t, []uint64{6}, ch.acks, "an empty call sends nothing")
}
