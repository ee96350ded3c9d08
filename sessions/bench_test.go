package sessions

import (
	"context"
	"strings"
	"testing"
	"time"
)

func benchManager(b *testing.B) (*Manager, Issued) {
	m, err := New(NewMemoryStore(), Config{Secret: []byte("0123456789abcdef0123456789abcdef"), TTL: time.Hour, Limit: 1})
	if err != nil {
		b.Fatal(err)
	}
	iss, err := m.Issue(context.Background(), "did:agentmesh:planner")
	if err != nil {
		b.Fatal(err)
	}
	return m, iss
}

// The whole Authenticate path on the in-memory store: the CPU cost the
// library adds on top of one database lookup.
func BenchmarkAuthenticateMemory(b *testing.B) {
	m, iss := benchManager(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Authenticate(ctx, iss.Token, "did:agentmesh:planner"); err != nil {
			b.Fatal(err)
		}
	}
}

// A forged token costs one HMAC and no store call.
func BenchmarkRejectForged(b *testing.B) {
	m, iss := benchManager(b)
	forged := iss.Token[:len(iss.Token)-2] + "AA"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Authenticate(context.Background(), forged, "did:agentmesh:planner"); err != ErrInvalidSignature {
			b.Fatal(err)
		}
	}
}

// An oversized token is refused on its length alone.
func BenchmarkRejectOversized(b *testing.B) {
	m, _ := benchManager(b)
	huge := strings.Repeat("A", 1<<20)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Authenticate(context.Background(), huge, "did:agentmesh:planner"); err != ErrInvalidTokenFormat {
			b.Fatal(err)
		}
	}
}

// Issue then Revoke, so the agent's session count stays flat.
func BenchmarkIssueRevokeMemory(b *testing.B) {
	m, err := New(NewMemoryStore(), Config{Secret: []byte("0123456789abcdef0123456789abcdef"), TTL: time.Hour, Limit: 1})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		iss, err := m.Issue(ctx, "did:agentmesh:planner")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Revoke(ctx, iss.Session.ID); err != nil {
			b.Fatal(err)
		}
	}
}
