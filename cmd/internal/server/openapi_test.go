package server_test

import (
	"bufio"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
)

// api/openapi.yaml documents exactly the served routes, with the admin
// key on exactly the admin routes. The file is read line by line (the
// module has no YAML dependency), relying on its two-space layout:
// paths at indent 2, methods at 4, an operation's security at 6.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	f, err := os.Open("../../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		pathRE     = regexp.MustCompile(`^  (/\S*):$`)
		methodRE   = regexp.MustCompile(`^    (get|put|post|delete|patch|head|options):$`)
		inPaths    bool
		path, op   string
		documented = map[string]bool{}
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "paths:":
			inPaths = true
		case inPaths && line != "" && !strings.HasPrefix(line, " "):
			inPaths = false
		case !inPaths:
		case pathRE.MatchString(line):
			path, op = pathRE.FindStringSubmatch(line)[1], ""
		case methodRE.MatchString(line):
			op = strings.ToUpper(methodRE.FindStringSubmatch(line)[1]) + " " + path
			documented[op] = false
		case op != "" && strings.TrimSpace(line) == "security: [{adminKey: []}]" && strings.HasPrefix(line, "      s"):
			documented[op] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	served := server.Routes()
	if !maps.Equal(documented, served) {
		t.Fatalf("api/openapi.yaml (route: admin):\n%v\nserved:\n%v", sorted(documented), sorted(served))
	}
}

func sorted(m map[string]bool) []string {
	var out []string
	for k, v := range m {
		if v {
			k += " (admin)"
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Every error code the API answers with (the library's table and the
// service's own) is in the Error schema's enum of api/openapi.yaml, and
// the enum lists nothing else; the table of codes in docs/operations.md names each.
func TestOpenAPIListsErrorCodes(t *testing.T) {
	spec, err := os.ReadFile("../../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)\n    Error:\n.*?enum: \[([^\]]*)\]`).FindSubmatch(spec)
	if m == nil {
		t.Fatal("api/openapi.yaml: no enum in components.schemas.Error")
	}
	documented := map[string]bool{}
	for _, c := range strings.Split(string(m[1]), ",") {
		documented[strings.TrimSpace(c)] = true
	}
	readme, err := os.ReadFile("../../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	inReadme := readmeCodes(t, string(readme))
	served := map[string]bool{}
	for _, c := range server.ErrorCodes() {
		served[c.Code] = true
		if !documented[c.Code] {
			t.Errorf("code %s (%d) is missing from the Error enum of api/openapi.yaml", c.Code, c.Status)
		}
		if st, ok := inReadme[c.Code]; !ok || st != strconv.Itoa(c.Status) {
			t.Errorf("code %s (%d) is not in docs/operations.md's table of codes with its status (found %q)", c.Code, c.Status, st)
		}
	}
	for c := range documented {
		if !served[c] {
			t.Errorf("api/openapi.yaml lists code %s, which the API never answers", c)
		}
	}
}

// readmeCodes reads the README's table of error codes (the one headed
// "| Status | Code | When |"): code -> status. A row may list several
// codes and statuses separated by " / ", paired in order, or several codes
// of one status.
func readmeCodes(t *testing.T, readme string) map[string]string {
	t.Helper()
	_, table, ok := strings.Cut(readme, "| Status | Code | When |\n|---|---|---|\n")
	if !ok {
		t.Fatal("docs/operations.md: no table of error codes")
	}
	table, _, _ = strings.Cut(table, "\n\n")
	out := map[string]string{}
	for _, row := range strings.Split(table, "\n") {
		cols := strings.Split(row, "|")
		if len(cols) < 4 {
			t.Fatalf("docs/operations.md: bad row %q", row)
		}
		statuses := strings.Split(strings.TrimSpace(cols[1]), " / ")
		codes := regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(cols[2], -1)
		for i, c := range codes {
			st := statuses[0]
			if len(statuses) == len(codes) {
				st = statuses[i]
			}
			out[c[1]] = st
		}
	}
	return out
}
