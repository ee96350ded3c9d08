package sessions

import (
	"context"
	"fmt"
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

// Authenticate of 1,000 sessions from parallel goroutines on the memory
// store, with and without an idle timeout: the CPU the recording of uses
// adds (a map under one mutex per manager) where nothing else costs much.
func BenchmarkAuthenticateParallel(b *testing.B) {
	for _, idle := range []time.Duration{0, time.Minute} {
		b.Run("idle="+idle.String(), func(b *testing.B) {
			m, err := New(NewMemoryStore(), Config{Secret: []byte("0123456789abcdef0123456789abcdef"), TTL: time.Hour, Limit: 1, IdleTimeout: idle})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close(context.Background())
			ctx := context.Background()
			tokens := make([]string, 1000)
			for i := range tokens {
				iss, err := m.Issue(ctx, fmt.Sprintf("agent-%d", i))
				if err != nil {
					b.Fatal(err)
				}
				tokens[i] = iss.Token
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, err := m.Authenticate(ctx, tokens[i%len(tokens)], fmt.Sprintf("agent-%d", i%len(tokens))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
