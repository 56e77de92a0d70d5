// argocd-lua runs one Argo CD resource customization script (health.lua,
// discovery.lua or action.lua) the way Argo CD runs scripts from argocd-cm, and
// prints what the script returned as JSON.
//
// The sandbox follows argo-cd util/lua/lua.go (VM.runLua): the standard
// libraries are skipped unless -open-libs is given (the argocd-cm
// "useOpenLibs" setting); then only package, base, table and a "safe" os
// (time, date: util/lua/oslib_safe.go) are opened; the run has a one-second
// deadline; the object is the global "obj"; the returned table is encoded with
// layeh.com/gopher-json, as Argo CD does before reading it.
//
// With -action the result is treated as an action's returned object: like
// ExecuteResourceAction (cleanReturnedObj), an empty table that Lua could not
// tell from an empty array takes back the live object's empty object.
//
// Usage: argocd-lua [-open-libs] [-action] SCRIPT.lua OBJECT.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

func main() {
	openLibs := flag.Bool("open-libs", false, "open every standard library (argocd-cm useOpenLibs)")
	action := flag.Bool("action", false, "the script is an action: restore empty objects")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua [-open-libs] [-action] SCRIPT.lua OBJECT.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fail(err)
	}
	raw, err := os.ReadFile(flag.Arg(1))
	if err != nil {
		fail(err)
	}
	var obj map[string]interface{}
	if err := json.Unmarshal(raw, &obj); err != nil {
		fail(fmt.Errorf("object: %w", err))
	}
	out, err := run(string(script), obj, *openLibs)
	if err != nil {
		fail(err)
	}
	if *action {
		if out, err = restoreEmptyObjects(out, obj); err != nil {
			fail(err)
		}
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

// run executes the script with Argo CD's library set and returns the JSON of
// the value the script returned (Argo CD rejects anything but a table).
func run(script string, obj map[string]interface{}, openLibs bool) ([]byte, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	libs := []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	}
	for _, lib := range libs {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	result := l.Get(-1)
	if result.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", result.Type().String())
	}
	return luajson.Encode(result)
}

// toLua converts decoded JSON the way Argo CD's decodeValue does (numbers are
// Lua numbers, objects and arrays tables, null nil).
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(l, item))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), toLua(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// The safe os subset Argo CD offers: os.time() and os.date() only. The
// scripts of this project use neither; os.date here does not reproduce
// Argo CD's strftime formats.
var safeOsFuncs = map[string]lua.LGFunction{
	"time": func(l *lua.LState) int {
		l.Push(lua.LNumber(time.Now().Unix()))
		return 1
	},
	"date": func(l *lua.LState) int {
		l.Push(lua.LString(time.Now().UTC().Format(time.RFC3339)))
		return 1
	},
}

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.OsLibName, safeOsFuncs))
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), safeOsFuncs))
	return 1
}

// restoreEmptyObjects undoes the one lossy step of the Lua round trip: the JSON
// encoder writes an empty table as [], so where the live object had an object
// (e.g. "pause": {}) and the script returned an empty array, the object is kept.
func restoreEmptyObjects(out []byte, live map[string]interface{}) ([]byte, error) {
	var returned interface{}
	if err := json.Unmarshal(out, &returned); err != nil {
		return nil, err
	}
	if m, ok := returned.(map[string]interface{}); ok {
		returned = restoreInMap(m, live)
	}
	return json.Marshal(returned)
}

func restoreInMap(returned, live map[string]interface{}) map[string]interface{} {
	for key, old := range live {
		value, ok := returned[key]
		if !ok {
			continue
		}
		switch v := value.(type) {
		case map[string]interface{}:
			if o, ok := old.(map[string]interface{}); ok {
				returned[key] = restoreInMap(v, o)
			}
		case []interface{}:
			switch o := old.(type) {
			case map[string]interface{}:
				if len(v) == 0 {
					returned[key] = o
				}
			case []interface{}:
				returned[key] = restoreInArray(v, o)
			}
		}
	}
	return returned
}

func restoreInArray(returned, live []interface{}) []interface{} {
	for i := range returned {
		if i >= len(live) {
			break
		}
		switch v := returned[i].(type) {
		case map[string]interface{}:
			if o, ok := live[i].(map[string]interface{}); ok {
				returned[i] = restoreInMap(v, o)
			}
		case []interface{}:
			if o, ok := live[i].([]interface{}); ok {
				returned[i] = restoreInArray(v, o)
			}
		}
	}
	return returned
}
