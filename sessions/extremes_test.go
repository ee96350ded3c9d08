package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// latestExpiry is 9999-12-31T23:59:59Z, the latest expiry a session may
// have (the package's maxExpiry).
const latestExpiry = 253402300799

// maxTTLSeconds is the longest TTL a time.Duration can hold, in seconds.
const maxTTLSeconds = math.MaxInt64 / int64(time.Second)

// checkIssueAuthenticates is the property: at any clock and TTL, Issue
// either refuses (a clock before 1970, past latestExpiry, or a TTL that
// would carry the expiry past it) or returns a token that Authenticate,
// Verify and Refresh accept on the same manager. It never refuses a
// combination that fits.
func checkIssueAuthenticates(t testing.TB, store sessions.Store, clockSecs, ttlSecs int64) {
	t.Helper()
	ctx := context.Background()
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte(secret), TTL: time.Duration(ttlSecs) * time.Second, Limit: 1 << 20,
		Clock: func() time.Time { return time.Unix(clockSecs, 0) },
	})
	if err != nil {
		t.Fatalf("New(ttl %ds): %v", ttlSecs, err)
	}
	agentID := fmt.Sprintf("did:agentmesh:clock-%d-ttl-%d", clockSecs, ttlSecs)
	iss, err := m.Issue(ctx, agentID)
	fits := clockSecs >= 0 && clockSecs <= latestExpiry && ttlSecs <= latestExpiry-clockSecs
	switch {
	case !fits && clockSecs < 0:
		if !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("clock %d: Issue = %v, want the clock-before-epoch denial", clockSecs, err)
		}
		return
	case !fits:
		if !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Fatalf("clock %d, ttl %ds: Issue = %v, want ErrInvalidConfig (expiry past 9999-12-31)", clockSecs, ttlSecs, err)
		}
		return
	case err != nil:
		t.Fatalf("clock %d, ttl %ds: Issue refused a combination that fits: %v", clockSecs, ttlSecs, err)
	}
	if _, err := m.Authenticate(ctx, iss.Token, agentID); err != nil {
		t.Fatalf("clock %d, ttl %ds: Authenticate of the token Issue just returned: %v", clockSecs, ttlSecs, err)
	}
	if _, err := m.Verify(ctx, iss.Token); err != nil {
		t.Fatalf("clock %d, ttl %ds: Verify: %v", clockSecs, ttlSecs, err)
	}
	ref, err := m.Refresh(ctx, iss.Token, agentID)
	if err != nil && !errors.Is(err, sessions.ErrLifetimeExceeded) {
		t.Fatalf("clock %d, ttl %ds: Refresh: %v", clockSecs, ttlSecs, err)
	}
	if err == nil {
		if _, err := m.Authenticate(ctx, ref.Token, agentID); err != nil {
			t.Fatalf("clock %d, ttl %ds: Authenticate after Refresh: %v", clockSecs, ttlSecs, err)
		}
	}
}

// extremeCases are clocks and TTLs at and around every boundary: the
// epoch, the latest expiry, and int64's end, where unsigned arithmetic
// on the clock would wrap.
func extremeCases() (clocks, ttls []int64) {
	ttls = []int64{1, 59, 3600, 86400 * 366, maxTTLSeconds - 1, maxTTLSeconds}
	clocks = []int64{-1, 0, 1, 1_700_000_000, math.MaxInt64 - 1, math.MaxInt64, math.MinInt64}
	for _, ttl := range ttls {
		clocks = append(clocks, latestExpiry-ttl-1, latestExpiry-ttl, latestExpiry-ttl+1)
	}
	clocks = append(clocks, latestExpiry, latestExpiry+1, latestExpiry+86400, 1<<62)
	return clocks, ttls
}

func TestIssuedTokensAuthenticateAtExtremeClocks(t *testing.T) {
	t.Parallel()
	clocks, ttls := extremeCases()
	t.Run("MemoryStore", func(t *testing.T) {
		store := sessions.NewMemoryStore()
		for _, c := range clocks {
			for _, ttl := range ttls {
				checkIssueAuthenticates(t, store, c, ttl)
			}
		}
		r := rand.New(rand.NewPCG(1, 2))
		for range 2000 {
			checkIssueAuthenticates(t, store, r.Int64N(latestExpiry+1_000_000)-1000, 1+r.Int64N(maxTTLSeconds))
			checkIssueAuthenticates(t, store, r.Int64(), 1+r.Int64N(1<<20))
		}
	})
	t.Run("PostgresStore", func(t *testing.T) {
		store, err := sessions.NewPostgresStore(testdb.New(t).Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range clocks {
			for _, ttl := range ttls {
				checkIssueAuthenticates(t, store, c, ttl)
			}
		}
	})
}

// FuzzIssueAuthenticates searches clocks and TTLs for a token that Issue
// returns and its own manager rejects.
func FuzzIssueAuthenticates(f *testing.F) {
	clocks, ttls := extremeCases()
	for i, c := range clocks {
		f.Add(c, ttls[i%len(ttls)])
	}
	store := sessions.NewMemoryStore()
	f.Fuzz(func(t *testing.T, clockSecs, ttlSecs int64) {
		if ttlSecs < 1 || ttlSecs > maxTTLSeconds {
			t.Skip("not a valid TTL: New refuses it")
		}
		checkIssueAuthenticates(t, store, clockSecs, ttlSecs)
	})
}
