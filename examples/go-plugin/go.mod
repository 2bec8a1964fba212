module hotrelease.example/arena

go 1.19

require hotrelease.example/gameapi v1.0.0

// Must be the very module version the host was built with (see examples/go-host/go.mod).
replace hotrelease.example/gameapi => ../go-host/api
