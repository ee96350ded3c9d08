package sessions_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/sessionstest"
)

const (
	latestExpiry  = 253402300799 // 9999-12-31T23:59:59Z
	maxTTLSeconds = math.MaxInt64 / int64(time.Second)
)

var checkIssueAuthenticates = sessionstest.IssueAuthenticates

// Beyond the boundary grid every store runs (sessionstest.ExtremeClocks):
// random clocks and TTLs on the memory store.
func TestIssuedTokensAuthenticateAtExtremeClocks(t *testing.T) {
	t.Parallel()
	store := sessions.NewMemoryStore()
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		checkIssueAuthenticates(t, store, r.Int64N(latestExpiry+1_000_000)-1000, 1+r.Int64N(maxTTLSeconds))
		checkIssueAuthenticates(t, store, r.Int64(), 1+r.Int64N(1<<20))
	}
}

// FuzzIssueAuthenticates searches clocks and TTLs for a token that Issue
// returns and its own manager rejects.
func FuzzIssueAuthenticates(f *testing.F) {
	for _, seed := range [][2]int64{
		{-1, 60}, {0, 1}, {1_700_000_000, maxTTLSeconds}, {latestExpiry - 60, 60}, {latestExpiry - 59, 60},
		{latestExpiry, 1}, {latestExpiry + 1, 1}, {math.MaxInt64 - 1, 1}, {math.MaxInt64, maxTTLSeconds},
	} {
		f.Add(seed[0], seed[1])
	}
	store := sessions.NewMemoryStore()
	f.Fuzz(func(t *testing.T, clockSecs, ttlSecs int64) {
		if ttlSecs < 1 || ttlSecs > maxTTLSeconds {
			t.Skip("not a valid TTL: New refuses it")
		}
		checkIssueAuthenticates(t, store, clockSecs, ttlSecs)
	})
}
