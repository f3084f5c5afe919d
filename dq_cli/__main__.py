from dq_cli.app import main

main()
