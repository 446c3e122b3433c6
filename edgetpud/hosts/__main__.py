from edgetpud.hosts.child import main

raise SystemExit(main())
