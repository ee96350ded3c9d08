package pgxstore_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every statement that writes agent_sessions keeps the agent's count row
// (migration 00004) in step, in the same statement: the limit check
// trusts that row. A query in queries/ that inserts, updates or deletes
// session rows without touching agent_session_counts fails this test, so
// a new writer cannot forget it.
func TestQueriesKeepCountsInStep(t *testing.T) {
	files, err := filepath.Glob("../../queries/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no queries found: %v", err)
	}
	writes := regexp.MustCompile(`(?i)\b(insert\s+into|update|delete\s+from)\s+agent_sessions\b`)
	// The one exception: a statement whose only write sets last_used_at
	// alone (migration 00006) adds and removes no row, so no count moves.
	lastUseOnly := regexp.MustCompile(`(?is)^\s*update\s+agent_sessions\s+\w+\s+set\s+last_used_at\s*=\s*[\w.]+\s+from\b`)
	comment := regexp.MustCompile(`--[^\n]*`)
	writers := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range strings.Split(string(b), "-- name: ")[1:] {
			name, _, _ := strings.Cut(q, " ")
			sql := comment.ReplaceAllString(q, "")
			if !writes.MatchString(sql) {
				continue
			}
			writers++
			if body := sql[strings.Index(sql, "\n"):]; lastUseOnly.MatchString(body) && len(writes.FindAllString(body, -1)) == 1 {
				continue
			}
			if !strings.Contains(sql, "agent_session_counts") {
				t.Errorf("%s: query %s writes agent_sessions but not agent_session_counts; "+
					"update the agent's count row in the same statement", filepath.Base(f), name)
			}
		}
	}
	if writers < 6 {
		t.Fatalf("found only %d queries writing agent_sessions; the pattern no longer sees them", writers)
	}
}
