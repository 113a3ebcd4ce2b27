from kvl_cli.cli import main

main()
