module hotrelease.example/gamehost

go 1.19

require hotrelease.example/gameapi v1.0.0

// The shared API module. In production publish it (a tagged module on your proxy) and have
// the host and every plugin require the same version; here it is a local directory so the
// example builds without any download.
replace hotrelease.example/gameapi => ./api
